"""Shared settings (from the environment) and the numpy-aware JSON response."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from servescope.runtime.responses import JSONResponse
from servescope.runtime.settings import CommonSettings


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


def test_json_response_serialises_numpy_values() -> None:
    values = np.array([[0.5, -1.25], [3.0, 4.75]], dtype=np.float32)
    response = JSONResponse({"data": values, "n": np.int64(7)})
    assert orjson.loads(response.body) == {"data": [[0.5, -1.25], [3.0, 4.75]], "n": 7}
    assert response.headers["content-type"] == "application/json"
