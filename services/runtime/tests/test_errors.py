"""install_error_handlers: every failure answers {"error", "kind"[, "stage"]}."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from servescope.runtime.errors import ServiceError, install_error_handlers

SECRET = "/srv/secret/model.onnx token=hunter2"


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.post("/only-post")
    async def only_post() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"cannot open {SECRET}")

    @app.get("/expected")
    async def expected() -> None:
        raise ServiceError(409, "conflict_here", "that clashes", stage="infer")

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(418, "short and stout")

    # The catch-all handler re-raises after answering; keep the answer instead.
    return TestClient(app, raise_server_exceptions=False)


def test_unknown_route_is_404_in_the_shared_shape(client: TestClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "kind"}
    assert body["kind"] == "not_found"
    assert isinstance(body["error"], str)
    assert body["error"]


def test_wrong_method_is_405_in_the_shared_shape(client: TestClient) -> None:
    response = client.get("/only-post")
    assert response.status_code == 405
    body = response.json()
    assert set(body) == {"error", "kind"}
    assert body["kind"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"  # what the route does accept


def test_validation_error_is_422_naming_the_field(client: TestClient) -> None:
    response = client.get("/items/not-a-number")
    assert response.status_code == 422
    body = response.json()
    assert set(body) == {"error", "kind"}
    assert body["kind"] == "invalid_request"
    assert body["error"].startswith("invalid request: ")
    assert "item_id" in body["error"]


def test_valid_request_is_untouched(client: TestClient) -> None:
    response = client.get("/items/41")
    assert response.status_code == 200
    assert response.json() == {"item_id": 41}


def test_service_error_carries_status_kind_and_stage(client: TestClient) -> None:
    response = client.get("/expected")
    assert response.status_code == 409
    assert response.json() == {"error": "that clashes", "kind": "conflict_here", "stage": "infer"}


def test_other_http_status_gets_the_generic_kind(client: TestClient) -> None:
    response = client.get("/teapot")
    assert response.status_code == 418
    assert response.json() == {"error": "short and stout", "kind": "http_error"}


def test_unexpected_exception_is_500_without_internals(client: TestClient) -> None:
    response = client.get("/boom")
    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"error", "kind"}
    assert body["kind"] == "internal"
    text = response.text
    assert "Traceback" not in text
    assert "RuntimeError" not in text
    assert "hunter2" not in text
    assert "/srv/secret" not in text


def test_service_error_body_omits_an_empty_stage() -> None:
    err = ServiceError(400, "bad", "nope")
    assert err.body() == {"error": "nope", "kind": "bad"}
    assert str(err) == "nope"
