"""Every responder setting, read from the environment (a secret also from a file, see
servescope.runtime.settings: the chart mounts the webhook token as one).

Server, logging and telemetry settings are the common `SERVESCOPE_*` ones every service reads
(`SERVESCOPE_HOST`, `SERVESCOPE_PORT`, `SERVESCOPE_LOG_LEVEL`, ...); the responder's own carry
the `SERVESCOPE_RESPONDER_` prefix, so they cannot collide with another service's.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from servescope.responder.playbooks import parse_duration
from servescope.runtime.settings import CommonSettings, not_blank

ENV_PREFIX = "SERVESCOPE_RESPONDER_"


def _env(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


class Settings(CommonSettings):
    # Fields may be given by name in code (tests, tools); the environment uses the aliases.
    model_config = SettingsConfigDict(validate_by_name=True, validate_by_alias=True)

    service_name: str = "responder"
    port: int = Field(9095, ge=0, le=65535)
    # Alerts are rare and each one matters: keep every trace and every log line by default.
    trace_sample_ratio: float = Field(1.0, ge=0, le=1)
    log_info_sample_ratio: float = Field(1.0, ge=0, le=1)
    prometheus_url: str = Field(
        "http://127.0.0.1:9090",
        validation_alias=_env("prometheus_url"),
        description="The Prometheus the diagnostic queries go to.",
    )
    incident_dir: Path = Field(
        Path(".run/incidents"),
        validation_alias=_env("incident_dir"),
        description="Where the notes are written (JSON and markdown, one pair per incident).",
    )
    window: str = Field(
        "5m",
        validation_alias=_env("window"),
        description="Range of the diagnostic queries, a PromQL duration.",
    )
    runbook_base_url: str | None = Field(
        None,
        validation_alias=_env("runbook_base_url"),
        description="Base URL the rules' relative runbook_url annotations are resolved "
        "against, e.g. a fork's repository at its main branch. Unset: the runbook file in "
        "runbook_dir, or else the annotation as it is.",
    )
    runbook_dir: Path | None = Field(
        None,
        validation_alias=_env("runbook_dir"),
        description="Directory holding the runbook pages (runbooks/ of a checkout); a note "
        "says whether its alert's page exists there. Unset: not checked (exists: null).",
    )
    trace_url_template: str | None = Field(
        None,
        validation_alias=_env("trace_url_template"),
        description="Link for a trace id in the notes, with {trace_id} (e.g. Jaeger's UI). "
        "Unset: trace ids only.",
    )
    query_timeout_seconds: float = Field(
        5.0,
        gt=0,
        validation_alias=_env("query_timeout_seconds"),
        description="Longest wait for one Prometheus query.",
    )
    max_traces: int = Field(
        5,
        ge=0,
        le=50,
        validation_alias=_env("max_traces"),
        description="Trace ids (from exemplars) listed per note; 0 turns the look-up off.",
    )
    max_request_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest webhook body accepted (413 above).",
    )
    max_pending_alerts: int = Field(
        256,
        ge=1,
        le=10_000,
        validation_alias=_env("max_pending_alerts"),
        description="Alerts diagnosed at once; a webhook that would pass it gets 503 with "
        "Retry-After, which Alertmanager retries.",
    )
    webhook_token: SecretStr | None = Field(
        None,
        validation_alias=_env("webhook_token"),
        description="Bearer token POST /alerts requires (Alertmanager's "
        "http_config.authorization.credentials). Unset: the webhook is open, as in local mode. "
        "In a pod: the file SERVESCOPE_RESPONDER_WEBHOOK_TOKEN in the secrets directory.",
    )

    @field_validator("webhook_token")
    @classmethod
    def _webhook_token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        return not_blank(value)

    @field_validator("window")
    @classmethod
    def _promql_duration(cls, value: str) -> str:
        parse_duration(value)  # raises ValueError with what is wrong
        return value

    @field_validator("trace_url_template")
    @classmethod
    def _has_trace_id(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if "{trace_id}" not in value:
            raise ValueError("must contain {trace_id}")
        try:
            value.format(trace_id="0" * 32)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{trace_id}} may be substituted: {exc}") from exc
        return value

    @field_validator("runbook_base_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None


def env_names() -> dict[str, str]:
    """Setting name -> the environment variable it is read from."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names[name] = alias if isinstance(alias, str) else f"{prefix}{name}".upper()
    return names
