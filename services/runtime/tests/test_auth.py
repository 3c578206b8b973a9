"""Bearer tokens: refused in the shared shape, counted, and compared whatever was sent."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from servescope.runtime.auth import BearerToken
from servescope.runtime.errors import install_error_handlers
from servescope.telemetry.metrics import ServiceMetrics

TOKEN = "s3cret-token"


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    metrics = ServiceMetrics("preprocess")
    install_error_handlers(app, metrics)
    guard = BearerToken(TOKEN, "test endpoints")

    @app.get("/guarded")
    async def guarded(request: Request) -> dict[str, str]:
        guard.check(request)
        return {"ok": "yes"}

    @app.get("/metrics")
    async def scrape() -> str:
        return metrics.exposition(None)[0].decode()

    return TestClient(app)


def unauthorized_count(client: TestClient) -> float:
    for line in client.get("/metrics").json().splitlines():
        if line.startswith('servescope_rejected_inputs_total{reason="unauthorized"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", TOKEN, "Bearer " + "a" * 5000],
)
def test_a_missing_or_wrong_token_is_a_counted_401_that_names_no_secret(
    client: TestClient, header: str | None
) -> None:
    before = unauthorized_count(client)
    headers = {} if header is None else {"authorization": header}
    response = client.get("/guarded", headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "error": "test endpoints need the bearer token",
        "kind": "unauthorized",
    }
    assert unauthorized_count(client) == before + 1


def test_the_right_token_passes(client: TestClient) -> None:
    response = client.get("/guarded", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert unauthorized_count(client) == 0
