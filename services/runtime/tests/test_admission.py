"""Admission: oversized headers refused with 431; past the in-flight bound, 503 with\nRetry-After at once, counted; probes never shed."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from servescope.runtime.admission import MAX_HEADER_BYTES
from servescope.runtime.health import Health
from servescope.runtime.instrument import instrument_app
from servescope.runtime.settings import CommonSettings
from servescope.telemetry.metrics import ServiceMetrics


def test_past_the_limit_requests_get_503_at_once_and_probes_still_answer() -> None:
    app = FastAPI()
    metrics = ServiceMetrics("preprocess")
    health = Health("preprocess", "test")
    instrument_app(app, metrics, health, CommonSettings(max_concurrent_requests=2))
    release = asyncio.Event()

    @app.post("/v1/predict")
    async def predict() -> dict[str, str]:
        await release.wait()
        return {"ok": "yes"}

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [asyncio.create_task(client.post("/v1/predict")) for _ in range(2)]
            await asyncio.sleep(0.05)  # both are inside the handler now
            shed = await asyncio.gather(*(client.post("/v1/predict") for _ in range(3)))
            assert [r.status_code for r in shed] == [503] * 3
            assert all(r.headers["retry-after"] == "1" for r in shed)
            assert shed[0].json()["kind"] == "overloaded"
            assert (await client.get("/healthz")).status_code == 200  # probes are not shed
            scrape = (await client.get("/metrics")).text
            assert "servescope_requests_shed_total 3.0" in scrape
            assert 'http_response_status_code="503"' in scrape  # still seen as 503s
            release.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            assert (await client.post("/v1/predict")).status_code == 200  # room again

    asyncio.run(scenario())


def test_headers_over_the_bound_are_a_counted_431_before_any_work() -> None:
    app = FastAPI()
    metrics = ServiceMetrics("preprocess")
    instrument_app(app, metrics, Health("preprocess", "test"), CommonSettings())
    reached: list[bool] = []

    @app.post("/v1/predict")
    async def predict() -> dict[str, str]:
        reached.append(True)
        return {"ok": "yes"}

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            huge = {"x-huge": "a" * (MAX_HEADER_BYTES + 1)}
            refused = await client.post("/v1/predict", headers=huge)
            assert refused.status_code == 431
            assert refused.json()["kind"] == "headers_too_large"
            assert not reached
            scrape = (await client.get("/metrics")).text
            assert 'servescope_rejected_inputs_total{reason="headers_too_large"} 1.0' in scrape
            assert (await client.post("/v1/predict")).status_code == 200

    asyncio.run(scenario())
