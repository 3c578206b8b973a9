"""The responder's settings: common SERVESCOPE_* for the server, SERVESCOPE_RESPONDER_* for
its own, checked at startup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from servescope.responder.settings import Settings, env_names


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SERVESCOPE_")]:
        monkeypatch.delenv(key)


def test_defaults_listen_on_loopback_port_9095() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.service_name) == ("127.0.0.1", 9095, "responder")
    assert settings.runbook_dir is None and settings.window == "5m"


def test_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    given = {
        "SERVESCOPE_HOST": "0.0.0.0",
        "SERVESCOPE_PORT": "9999",
        "SERVESCOPE_LOG_LEVEL": "debug",
        "SERVESCOPE_RESPONDER_PROMETHEUS_URL": "http://prometheus:9090",
        "SERVESCOPE_RESPONDER_INCIDENT_DIR": "/var/notes",
        "SERVESCOPE_RESPONDER_WINDOW": "10m",
        "SERVESCOPE_RESPONDER_RUNBOOK_BASE_URL": "https://git.invalid/repo",
        "SERVESCOPE_RESPONDER_RUNBOOK_DIR": "/repo/runbooks",
        "SERVESCOPE_RESPONDER_TRACE_URL_TEMPLATE": "http://jaeger/trace/{trace_id}",
        "SERVESCOPE_RESPONDER_QUERY_TIMEOUT_SECONDS": "2.5",
        "SERVESCOPE_RESPONDER_MAX_TRACES": "0",
    }
    for key, value in given.items():
        monkeypatch.setenv(key, value)
    # Not ours: a bare PROMETHEUS_URL or the old SERVESCOPE_RESPONDER_PORT is ignored.
    monkeypatch.setenv("PROMETHEUS_URL", "http://wrong")
    monkeypatch.setenv("SERVESCOPE_RESPONDER_PORT", "1")
    s = Settings()
    assert (s.host, s.port, s.log_level) == ("0.0.0.0", 9999, "debug")
    assert s.prometheus_url == "http://prometheus:9090"
    assert s.incident_dir == Path("/var/notes") and s.runbook_dir == Path("/repo/runbooks")
    assert (s.window, s.query_timeout_seconds, s.max_traces) == ("10m", 2.5, 0)
    assert s.runbook_base_url == "https://git.invalid/repo"
    assert s.trace_url_template == "http://jaeger/trace/{trace_id}"
    assert set(given) <= set(env_names().values())
    assert env_names()["runbook_dir"] == "SERVESCOPE_RESPONDER_RUNBOOK_DIR"


def test_settings_may_be_given_by_name_in_code(tmp_path: Path) -> None:
    assert Settings(incident_dir=tmp_path).incident_dir == tmp_path


@pytest.mark.parametrize(
    ("field", "value", "complaint"),
    [
        ("window", "5 minutes", "not a Prometheus duration"),
        ("trace_url_template", "http://jaeger/trace/", "must contain {trace_id}"),
        ("trace_url_template", "http://j/{trace_id}/{span}", "only {trace_id}"),
        ("max_traces", 51, "less than or equal to 50"),
        ("query_timeout_seconds", 0, "greater than 0"),
    ],
)
def test_bad_values_fail_at_startup(field: str, value: object, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Settings(**{field: value})


def test_empty_links_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVESCOPE_RESPONDER_RUNBOOK_BASE_URL", "")
    monkeypatch.setenv("SERVESCOPE_RESPONDER_TRACE_URL_TEMPLATE", "")
    s = Settings()
    assert s.runbook_base_url is None and s.trace_url_template is None


def test_the_webhook_token_comes_from_its_file_before_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a pod the chart mounts the token as SERVESCOPE_RESPONDER_WEBHOOK_TOKEN in the secrets
    directory; local mode may set the variable instead; the file wins."""
    monkeypatch.setenv("SERVESCOPE_RESPONDER_WEBHOOK_TOKEN", "from-env")
    assert Settings(_secrets_dir=tmp_path / "absent").webhook_token is not None
    (tmp_path / "SERVESCOPE_RESPONDER_WEBHOOK_TOKEN").write_text("from-file\n")
    token = Settings(_secrets_dir=tmp_path).webhook_token
    assert token is not None and token.get_secret_value() == "from-file"
    monkeypatch.delenv("SERVESCOPE_RESPONDER_WEBHOOK_TOKEN")
    token = Settings(_secrets_dir=tmp_path).webhook_token
    assert token is not None and token.get_secret_value() == "from-file"


def test_a_blank_webhook_token_file_is_refused_not_an_open_webhook(tmp_path: Path) -> None:
    (tmp_path / "SERVESCOPE_RESPONDER_WEBHOOK_TOKEN").write_text("\n")
    with pytest.raises(ValidationError, match="blank"):
        Settings(_secrets_dir=tmp_path)
