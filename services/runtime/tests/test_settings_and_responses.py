"""Shared settings (from the environment, secrets also from files) and the numpy-aware JSON
response."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from servescope.runtime.responses import JSONResponse
from servescope.runtime.settings import SECRETS_DIR, CommonSettings


def test_settings_come_from_servescope_prefixed_environment(monkeypatch) -> None:
    monkeypatch.setenv("SERVESCOPE_PORT", "9123")
    monkeypatch.setenv("SERVESCOPE_LOG_FORMAT", "console")
    monkeypatch.setenv("PORT", "1")  # unprefixed: ignored
    settings = CommonSettings()
    assert settings.port == 9123
    assert settings.log_format == "console"


def test_invalid_settings_are_refused(monkeypatch) -> None:
    monkeypatch.setenv("SERVESCOPE_PORT", "70000")
    with pytest.raises(ValidationError):
        CommonSettings()
    monkeypatch.setenv("SERVESCOPE_PORT", "8000")
    monkeypatch.setenv("SERVESCOPE_LOG_LEVEL", "verbose")
    with pytest.raises(ValidationError):
        CommonSettings()


def test_a_secret_comes_from_its_file_which_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert CommonSettings.model_config.get("secrets_dir") == SECRETS_DIR  # the chart's mount
    (tmp_path / "SERVESCOPE_ADMIN_TOKEN").write_text("from-file\n")  # stripped
    monkeypatch.setenv("SERVESCOPE_ADMIN_TOKEN", "from-env")
    monkeypatch.setenv("SERVESCOPE_PORT", "9123")
    settings = CommonSettings(_secrets_dir=tmp_path)
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "from-file"
    assert settings.port == 9123  # the rest still from the environment
    # In code, an argument wins over both.
    given = CommonSettings(_secrets_dir=tmp_path, admin_token="given")
    assert given.admin_token is not None and given.admin_token.get_secret_value() == "given"


def test_without_the_directory_the_environment_is_read_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local mode: no secrets directory, the token from env, and no warning about the
    directory (pydantic-settings warns about a missing secrets_dir when asked to read it)."""
    monkeypatch.setenv("SERVESCOPE_ADMIN_TOKEN", "from-env")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings = CommonSettings(_secrets_dir=tmp_path / "absent")
        CommonSettings()  # the default directory, absent here as in local mode
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "from-env"
    monkeypatch.delenv("SERVESCOPE_ADMIN_TOKEN")
    assert CommonSettings(_secrets_dir=tmp_path / "absent").admin_token is None


@pytest.mark.parametrize("blank", ["", " \n"])
def test_a_blank_token_is_refused_not_read_as_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    """Unset means no admin routes; an empty Secret key must not pass for that."""
    (tmp_path / "SERVESCOPE_ADMIN_TOKEN").write_text(blank)
    with pytest.raises(ValidationError, match="blank"):
        CommonSettings(_secrets_dir=tmp_path)
    monkeypatch.setenv("SERVESCOPE_ADMIN_TOKEN", blank)
    with pytest.raises(ValidationError, match="blank"):
        CommonSettings()


def test_json_response_serialises_numpy_values() -> None:
    values = np.array([[0.5, -1.25], [3.0, 4.75]], dtype=np.float32)
    response = JSONResponse({"data": values, "n": np.int64(7)})
    assert orjson.loads(response.body) == {"data": [[0.5, -1.25], [3.0, 4.75]], "n": 7}
    assert response.headers["content-type"] == "application/json"
