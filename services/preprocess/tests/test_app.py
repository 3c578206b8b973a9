"""The preprocess app on its own: readiness waits for the classifier, the edge refuses early."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from servescope.preprocess.app import create_app
from servescope.preprocess.settings import Settings
from servescope.runtime.health import Health

PNG = (Path(__file__).resolve().parents[2] / "classifier/model/heldout/0000_7.png").read_bytes()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    # Nothing listens on the classifier's port: preprocess can never learn the model.
    port = closed_port()
    settings = Settings(
        classifier_url=f"http://127.0.0.1:{port}",
        postprocess_url=f"http://127.0.0.1:{port}",
        max_body_bytes=4096,
    )
    with TestClient(create_app(settings, Health("preprocess", "test"))) as client:
        yield client


def test_not_ready_until_model_metadata_arrives(client: TestClient) -> None:
    time.sleep(0.1)  # let the refresher try (and fail) at least once
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["waiting_for"] == ["model_metadata"]


def test_model_endpoint_is_503_while_unknown(client: TestClient) -> None:
    response = client.get("/v1/model")
    assert response.status_code == 503
    assert response.json()["kind"] == "classifier_unavailable"


def test_predict_is_503_classifier_unavailable(client: TestClient) -> None:
    response = client.post("/v1/predict", content=PNG, headers={"Content-Type": "image/png"})
    assert response.status_code == 503
    body = response.json()
    assert body["kind"] == "classifier_unavailable"
    assert body["stage"] == "classifier"


def test_wrong_content_type_is_refused_before_any_downstream_call(client: TestClient) -> None:
    response = client.post("/v1/predict", content=b"hello", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["kind"] == "unsupported_media_type"


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    response = client.post(
        "/v1/predict", content=b"\x89PNG" + b"\x00" * 4096, headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 413
    assert response.json()["kind"] == "body_too_large"


def test_top_k_out_of_range_is_422_in_the_shared_shape(client: TestClient) -> None:
    response = client.post(
        "/v1/predict?top_k=0", content=PNG, headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["kind"] == "invalid_request"
    assert "top_k" in body["error"]
