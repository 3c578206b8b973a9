"""Every preprocess setting, read from the environment (prefix `SERVESCOPE_`)."""

from __future__ import annotations

from pydantic import Field

from servescope.runtime.settings import CommonSettings


class Settings(CommonSettings):
    service_name: str = "preprocess"
    port: int = Field(8000, ge=0, le=65535)
    classifier_url: str = Field("http://127.0.0.1:8001", description="Base URL of the OIP server.")
    postprocess_url: str = Field("http://127.0.0.1:8002")
    model_name: str = Field("digits-cnn", description="Model to ask the classifier for.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest upload accepted; 413 above it."
    )
    max_pixels: int = Field(
        16_777_216,
        ge=64,
        description="Largest decoded image (width x height), checked from the header before "
        "any pixel is decoded, so decompression bombs cost nothing; 413 above it.",
    )
    min_side: int = Field(8, ge=1, description="Smallest width or height accepted; 422 below it.")
    default_top_k: int = Field(3, ge=1, le=100)
    connect_timeout_seconds: float = Field(0.5, gt=0)
    classifier_timeout_seconds: float = Field(
        2.0, gt=0, description="Whole-call budget for one inference, connect included."
    )
    postprocess_timeout_seconds: float = Field(1.0, gt=0)
    max_connections: int = Field(64, ge=1, description="Pooled connections per downstream.")
    metadata_refresh_seconds: float = Field(
        30.0, gt=0, description="How often model metadata is fetched again once known."
    )
