"""read_body: the size limit on request bodies, declared and streamed."""

from __future__ import annotations

import asyncio
import os

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient

from servescope.runtime.bodies import read_body
from servescope.runtime.errors import ServiceError, install_error_handlers

LIMIT = 100


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        body = await read_body(request, LIMIT, stage="decode")
        return Response(body, media_type="application/octet-stream")

    return TestClient(app)


def test_body_under_the_limit_comes_back_whole(client: TestClient) -> None:
    payload = os.urandom(LIMIT - 1)
    response = client.post("/echo", content=payload)
    assert response.status_code == 200
    assert response.content == payload


def test_body_of_exactly_the_limit_is_accepted(client: TestClient) -> None:
    payload = os.urandom(LIMIT)
    response = client.post("/echo", content=payload)
    assert response.status_code == 200
    assert response.content == payload


def test_declared_length_over_the_limit_is_413(client: TestClient) -> None:
    response = client.post("/echo", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    body = response.json()
    assert body["kind"] == "body_too_large"
    assert body["stage"] == "decode"
    assert f"{LIMIT + 1} bytes" in body["error"]
    assert f"{LIMIT} bytes" in body["error"]


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks():
        for _ in range(3):
            yield b"y" * 40  # 120 bytes in all, no Content-Length

    response = client.post("/echo", content=chunks())
    assert response.status_code == 413
    assert response.json()["kind"] == "body_too_large"


def test_chunked_body_under_the_limit_is_joined(client: TestClient) -> None:
    parts = [os.urandom(30), os.urandom(30), os.urandom(5)]

    def chunks():
        yield from parts

    response = client.post("/echo", content=chunks())
    assert response.status_code == 200
    assert response.content == b"".join(parts)


def _request(headers: list[tuple[bytes, bytes]], receive) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": headers,
    }
    return Request(scope, receive)


def test_declared_length_over_the_limit_reads_nothing() -> None:
    calls = 0

    async def receive():
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b"z" * 10, "more_body": True}

    request = _request([(b"content-length", str(10**9).encode())], receive)
    with pytest.raises(ServiceError) as caught:
        asyncio.run(read_body(request, LIMIT, stage="infer"))
    assert caught.value.status == 413
    assert caught.value.kind == "body_too_large"
    assert caught.value.stage == "infer"
    assert calls == 0


def test_stream_is_refused_at_the_first_chunk_past_the_limit() -> None:
    calls = 0

    async def receive():
        # An endless stream of 40-byte chunks: 40, 80, then 120 > 100 on the third.
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b"z" * 40, "more_body": True}

    request = _request([], receive)
    with pytest.raises(ServiceError) as caught:
        asyncio.run(read_body(request, LIMIT, stage="decode"))
    assert caught.value.status == 413
    assert calls == 3
