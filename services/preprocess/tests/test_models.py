"""Routing by model at the edge: the bounded metadata cache and the refusals made before any
downstream call (the real classifier behind the route is in tests/integration/test_models_route.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from servescope.preprocess.app import create_app
from servescope.preprocess.imaging import InputSpec
from servescope.preprocess.pipeline import ModelCache, ModelInfo
from servescope.preprocess.settings import Settings
from servescope.runtime.health import Health

PNG = (Path(__file__).resolve().parents[2] / "classifier/model/heldout/0000_7.png").read_bytes()


def info(name: str) -> ModelInfo:
    spec = InputSpec.from_metadata(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]}
    )
    return ModelInfo(name=name, version="1", spec=spec, output_name="logits")


def test_the_cache_holds_at_most_its_capacity_evicting_the_least_recently_used() -> None:
    cache = ModelCache(capacity=3)
    for name in ("a", "b", "c"):
        cache.put(name, info(name))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", info("d"))
    assert cache.names() == ["c", "a", "d"]
    assert cache.get("b") is None
    assert len(cache) == 3
    cache.put("c", info("c"))  # a refresh counts as a use
    cache.put("e", info("e"))
    assert cache.names() == ["d", "c", "e"]
    cache.drop("c")
    cache.drop("never-there")
    assert cache.names() == ["d", "e"]


@pytest.fixture(scope="module")
def client():
    # Nothing listens where the classifier should be: a model name that passes the edge's
    # own checks is then a 503, one that does not is a 404 without any call.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(
        classifier_url=f"http://127.0.0.1:{port}", postprocess_url=f"http://127.0.0.1:{port}"
    )
    with TestClient(create_app(settings, Health("preprocess", "test"))) as client:
        yield client


def rejected(client: TestClient) -> dict[str, float]:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {
        sample.labels["reason"]: sample.value
        for family in families
        if family.name == "servescope_rejected_inputs"
        for sample in family.samples
        if sample.name == "servescope_rejected_inputs_total"
    }


@pytest.mark.parametrize("name", ["bad%20name", "x" * 129, "%2E%2E", "caf%C3%A9"])
def test_a_name_no_model_can_have_is_404_unknown_model_and_counted(
    client: TestClient, name: str
) -> None:
    before = rejected(client).get("unknown_model", 0.0)
    response = client.post(
        f"/v1/models/{name}/predict", content=PNG, headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"error", "kind"}
    assert body["kind"] == "unknown_model"
    assert "no such model" in body["error"]
    assert rejected(client)["unknown_model"] == before + 1


def test_a_path_no_route_matches_is_not_a_rejected_input(client: TestClient) -> None:
    before = rejected(client)
    response = client.post("/v1/models/digits/classify", content=PNG)
    assert response.status_code == 404
    assert response.json()["kind"] == "not_found"
    assert rejected(client) == before


def test_a_plausible_name_asks_the_classifier_and_says_it_is_unavailable(
    client: TestClient,
) -> None:
    response = client.post(
        "/v1/models/digits-logreg/predict", content=PNG, headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 503
    assert response.json()["kind"] == "classifier_unavailable"


def test_the_upload_is_checked_on_the_model_route_too(client: TestClient) -> None:
    response = client.post(
        "/v1/models/digits-logreg/predict", content=b"hi", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["kind"] == "unsupported_media_type"
