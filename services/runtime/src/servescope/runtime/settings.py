"""Settings every service shares. Each service subclasses `CommonSettings` in its own
settings module, which is the only place that service reads its environment.

Secret settings (the admin token, the responder's webhook token) may also come from files in
`SECRETS_DIR`, one file per setting named after its variable, e.g.
/run/secrets/servescope/SERVESCOPE_ADMIN_TOKEN: pydantic-settings' `secrets_dir`. The chart
mounts its Secrets there (a file, not an environment variable: env leaks into crash dumps,
`/proc/<pid>/environ` and child processes). Precedence, highest first: arguments in code, a
file there, the environment (local mode), defaults. No such directory: the environment only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from servescope.telemetry.settings import TelemetrySettings

SECRETS_DIR = Path("/run/secrets/servescope")


def _directories(value: object) -> list[Path]:
    if isinstance(value, str | os.PathLike):
        return [Path(value)]
    if isinstance(value, Sequence):
        return [Path(v) for v in value]
    return []


class CommonSettings(TelemetrySettings):
    """Server, logging and shutdown settings, read from `SERVESCOPE_*` variables (or, for a
    secret, from a file of that name in `SECRETS_DIR`)."""

    model_config = SettingsConfigDict(secrets_dir=SECRETS_DIR)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The mounted file wins over the environment: in a pod it is the Secret's current
        # value, and the chart refuses the same name as a plain env value anyway. Without the
        # directory (local mode, tests) the source is left out, since pydantic-settings warns
        # about a missing secrets_dir on every read.
        directories = _directories(getattr(file_secret_settings, "secrets_dir", None))
        files = [file_secret_settings] if any(d.is_dir() for d in directories) else []
        return (init_settings, *files, env_settings, dotenv_settings)

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
    max_concurrent_requests: int = Field(
        64,
        ge=0,
        description="Requests worked on at once (probes and /metrics not counted); past it a "
        "request gets 503 with Retry-After at once instead of queueing. 0: no limit. The "
        "default is eight times the bench's highest concurrency; a fork sets what one replica "
        "serves within its callers' timeout (throughput x p99, by Little's law).",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="Enables /admin/faults, guarded by this bearer token. Unset: no admin "
        "routes. In a pod: the file SERVESCOPE_ADMIN_TOKEN in the secrets directory.",
    )
    faults: str = Field(
        "",
        description="Faults on from the start, comma-separated KIND[:STEP][:VALUE] specs, e.g. "
        "delay:resize:0.5,error:infer:0.2,crash:100 (kinds and bounds: "
        "servescope.telemetry.faultspec; steps: the contract's pipeline section). Empty: none.",
    )
    fault_stage: str | None = Field(
        None,
        description="Older form of a delay fault: the step to slow down at startup (with "
        "fault_delay_seconds); SERVESCOPE_FAULTS=delay:STEP:SECONDS says the same.",
    )
    fault_delay_seconds: float = Field(
        0.0, ge=0, le=30, description="Extra delay in fault_stage; 0 = no fault."
    )
    fault_cache_dir: Path | None = Field(
        None,
        description="Where the cache fault writes its file; unset: /dev/shm (tmpfs) when "
        "present, else the temp dir. In a pod, an emptyDir with medium Memory.",
    )
    fault_max_bytes: int = Field(
        1024**3,
        ge=0,
        le=64 * 1024**3,
        description="The leak and cache faults each stop growing at this many bytes (safety "
        "for runs without a memory limit).",
    )

    @field_validator("admin_token")
    @classmethod
    def _admin_token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        return not_blank(value)


def not_blank(value: SecretStr | None) -> SecretStr | None:
    """A token that is set but blank (an empty Secret key or file) is refused rather than read
    as unset, which would open what the token guards."""
    if value is not None and not value.get_secret_value().strip():
        raise ValueError("is blank: unset it, or give the token")
    return value
