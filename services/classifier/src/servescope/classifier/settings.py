"""Every classifier setting, read from the environment (prefix `SERVESCOPE_`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from servescope.runtime.settings import CommonSettings


class Settings(CommonSettings):
    service_name: str = "classifier"
    port: int = Field(8001, ge=0, le=65535)
    # Required: the service never guesses where the repository is. Local mode and the image
    # set it (the bundled model is services/classifier/model/digits-cnn.onnx).
    model_path: Path = Field(
        description="Any ONNX model; name, version and preprocessing hints come from its "
        "metadata_props (servescope.*) when present.",
    )
    model_card_path: Path | None = Field(
        None,
        description="Model card with the reference statistics for drift detection; default: "
        "model-card.json beside the model file, when it exists. Without one, drift scores stay 0.",
    )
    drift_window: int = Field(
        100, ge=10, description="Inputs in the sliding drift window (recent traffic only)."
    )
    model_repository: Path | None = Field(
        None,
        description="A model repository to serve besides the default model: a directory with "
        "one sub-directory per model, <name>/model-card.json plus the ONNX file its 'file' "
        "names (`servescope models build` writes one). Every model loads and warms up before "
        "the classifier is ready; more than the telemetry contract's max_models refuses to "
        "start. Unset: only the default model, as before.",
    )
    model_name: str | None = Field(None, description="Overrides the name in the model file.")
    model_version: str | None = Field(None, description="Overrides the version in the file.")
    intra_op_threads: int = Field(
        1, ge=0, description="onnxruntime threads per inference; 1 suits one process per core."
    )
    max_batch_size: int = Field(64, ge=1, description="Largest batch one infer call may carry.")
    max_request_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest infer request body accepted (413 above)."
    )
    offload_inference: bool = Field(
        False,
        description="Run inference in a worker thread. Off by default: the bundled model runs "
        "in microseconds, less than a thread hop; turn on for models that take milliseconds "
        "so health probes never wait behind an inference.",
    )
