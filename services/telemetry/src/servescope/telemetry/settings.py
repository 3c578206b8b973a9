"""The telemetry settings every service shares, read from `SERVESCOPE_*` variables.

The service runtime (servescope.runtime.settings) extends them with the server's own."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TelemetrySettings(BaseSettings):
    """Tracing, metrics and log sampling; a service's name and version."""

    model_config = SettingsConfigDict(env_prefix="SERVESCOPE_", extra="ignore")

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
        description="Also write spans as JSON lines here, with or without an OTLP endpoint "
        "(local mode: .run/traces/<service>.jsonl, read by `servescope trace`).",
    )
    trace_flush_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Longest wait at exit for the spans still queued to be exported; past "
        "it they are given up (and logged), so a collector that is down or hangs cannot hold "
        "a pod past its termination grace period.",
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
