"""Every postprocess setting, read from the environment (prefix `SERVESCOPE_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from servescope.runtime.settings import CommonSettings


class Settings(CommonSettings):
    service_name: str = "postprocess"
    port: int = Field(8002, ge=0, le=65535)
    # Required, like the classifier's model: local mode and the image set it.
    model_cards: list[Path] = Field(
        min_length=1,
        description="Model card JSON files (a JSON list in the environment); labels and the "
        "calibration temperature of each model come from its card.",
    )
    model_repository: Path | None = Field(
        None,
        description="A model repository (one <name>/model-card.json per model): every card "
        "in it is loaded too. Unset: only model_cards.",
    )
    default_top_k: int = Field(3, ge=1, le=100)
    max_request_bytes: int = Field(1024 * 1024, ge=1024)
