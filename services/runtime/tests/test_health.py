"""Health: readiness as a conjunction of named conditions, and /healthz versus /readyz."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from servescope.runtime.health import Health, add_health_routes


def test_no_conditions_means_ready() -> None:
    health = Health("svc", "1.0")
    assert health.ready
    assert health.not_ready_reasons() == []


def test_required_conditions_start_false_and_are_listed_in_order() -> None:
    health = Health("svc", "1.0")
    health.require("model_loaded", "cards_loaded")
    assert not health.ready
    assert health.not_ready_reasons() == ["model_loaded", "cards_loaded"]
    health.set("cards_loaded", True)
    assert not health.ready
    assert health.not_ready_reasons() == ["model_loaded"]
    health.set("model_loaded", True)
    assert health.ready
    assert health.not_ready_reasons() == []


def test_require_does_not_reset_a_condition_already_met() -> None:
    health = Health("svc", "1.0")
    health.set("model_loaded", True)
    health.require("model_loaded")
    assert health.conditions == {"model_loaded": True}
    assert health.ready


def test_a_condition_can_turn_false_again() -> None:
    health = Health("svc", "1.0")
    health.require("upstream")
    health.set("upstream", True)
    health.set("upstream", False)
    assert not health.ready
    assert health.not_ready_reasons() == ["upstream"]


def test_draining_overrides_all_conditions_and_comes_last() -> None:
    health = Health("svc", "1.0")
    health.require("a")
    health.draining = True
    assert health.not_ready_reasons() == ["a", "draining"]
    health.set("a", True)
    assert not health.ready
    assert health.not_ready_reasons() == ["draining"]


def _client(health: Health) -> TestClient:
    app = FastAPI()
    add_health_routes(app, health)
    return TestClient(app)


def test_healthz_is_ok_even_when_not_ready() -> None:
    health = Health("classifier", "0.1.0")
    health.require("model_loaded")
    client = _client(health)
    live = client.get("/healthz")
    assert live.status_code == 200
    assert live.json() == {"status": "ok", "service": "classifier"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {
        "status": "not_ready",
        "service": "classifier",
        "waiting_for": ["model_loaded"],
    }


def test_readyz_follows_the_state_live() -> None:
    health = Health("postprocess", "0.1.0")
    health.require("cards")
    client = _client(health)
    assert client.get("/readyz").status_code == 503
    health.set("cards", True)
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "service": "postprocess"}
    health.draining = True
    draining = client.get("/readyz")
    assert draining.status_code == 503
    assert draining.json()["waiting_for"] == ["draining"]
    assert client.get("/healthz").status_code == 200
