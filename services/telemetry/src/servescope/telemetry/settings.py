"""Settings every service shares. Each service subclasses `CommonSettings` in its own
settings module, which is the only place that service reads its environment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def repo_root() -> Path:
    """The checkout this code runs from, found by walking up to the workspace pyproject.

    Used only for defaults that point at bundled files (the model); containers set those
    paths explicitly through the environment.
    """
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "services" / "classifier" / "model").is_dir():
            return parent
    return Path.cwd()


def bundled_model_dir() -> Path:
    return repo_root() / "services" / "classifier" / "model"


class CommonSettings(BaseSettings):
    """Server, logging and shutdown settings, read from `SERVESCOPE_*` variables."""

    model_config = SettingsConfigDict(env_prefix="SERVESCOPE_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to bind; containers set 0.0.0.0.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = Field(
        "json", description="json for machines (the default), console for humans."
    )
    drain_seconds: float = Field(
        0.0,
        ge=0,
        description=(
            "After SIGTERM, keep serving this long while reporting not ready, so load "
            "balancers stop sending new work before the listener closes."
        ),
    )
    graceful_timeout_seconds: float = Field(
        20.0, gt=0, description="Longest wait for in-flight requests after the listener closes."
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Enables /admin/faults, guarded by this bearer token. Unset: no admin routes.",
    )
    fault_stage: str | None = Field(
        None, description="Step to slow down at startup (preprocess: decode, resize, normalise)."
    )
    fault_delay_seconds: float = Field(
        0.0, ge=0, le=30, description="Extra delay in fault_stage; 0 = no fault."
    )
    telemetry_enabled: bool = Field(
        True,
        description="Off turns off tracing, HTTP metrics and per-request logs at once: the "
        "'bare' configuration benchmarks compare against.",
    )
    trace_sample_ratio: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Head sampling ratio for traces started here (parent-based: a sampled "
        "caller's decision wins). Local mode sets 1.0.",
    )
    trace_file: Path | None = Field(
        None,
        description="Without an OTLP endpoint, write spans as JSON lines here (local mode: "
        ".run/traces/<service>.jsonl, read by `servescope trace`).",
    )
    log_info_sample_ratio: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of traces whose INFO and DEBUG lines are kept, decided from the "
        "trace id so all services agree; WARNING and ERROR are always kept.",
    )
    service_name: str = Field("service", description="Name in logs, health and telemetry.")
    version: str = Field("0.1.0", description="Service version reported in health and logs.")
