"""traffic.py: LoadResult arithmetic and text, and run_load against a real local HTTP server."""

from __future__ import annotations

import asyncio
import io
import socket
from collections import Counter

import pytest
from aiohttp import web

from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import bad_samples, heldout_samples
from servescope.loadgen.traffic import LoadConfig, LoadResult, run_load


def test_percentiles_interpolate_in_milliseconds() -> None:
    result = LoadResult(latencies=[0.050, 0.010, 0.040, 0.020, 0.030])
    # Sorted: 10 20 30 40 50 ms; rank q/100 * (n - 1), linear between neighbours.
    assert result.percentile(0) == pytest.approx(10.0)
    assert result.percentile(50) == pytest.approx(30.0)
    assert result.percentile(95) == pytest.approx(40 + 0.8 * 10)
    assert result.percentile(99) == pytest.approx(40 + 0.96 * 10)
    assert result.percentile(100) == pytest.approx(50.0)


def test_percentile_without_latencies_is_zero() -> None:
    assert LoadResult().percentile(99) == 0.0


def test_summary_with_labels_and_errors() -> None:
    result = LoadResult(
        sent=10,
        ok=7,
        correct=5,
        labelled=6,
        errors=Counter({"415 unsupported_media_type": 1, "422 empty_body": 2}),
        latencies=[0.001, 0.002, 0.003],
        elapsed=4.0,
    )
    lines = result.summary().splitlines()
    assert lines[0] == "requests: 10 in 4.0 s (2.5/s), ok 7, errors 3"
    assert lines[1] == "latency ms: p50 2.0  p95 2.9  p99 3.0"
    assert lines[2] == "accuracy on labelled digits: 5/6 (0.833)"
    # Most frequent kind first.
    assert lines[3] == "errors by kind: 422 empty_body 2, 415 unsupported_media_type 1"
    assert len(lines) == 4


def test_summary_of_nothing() -> None:
    lines = LoadResult().summary().splitlines()
    assert lines == [
        "requests: 0 in 0.0 s (0.0/s), ok 0, errors 0",
        "latency ms: p50 0.0  p95 0.0  p99 0.0",
    ]


def closed_port() -> int:
    """A port nothing listens on: bound once by the OS, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StubEdge:
    """A real HTTP server standing in for preprocess: it says "7" to every PNG."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []

    async def predict(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((request.content_type, body))
        if request.content_type == "image/png" and body.startswith(b"\x89PNG"):
            return web.json_response({"label": "7"})
        return web.json_response({"error": "no", "kind": "stub_refusal"}, status=422)


async def _run(config_kwargs: dict) -> tuple[LoadResult, StubEdge, str]:
    stub = StubEdge()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v1/predict", stub.predict)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    progress = io.StringIO()
    try:
        config = LoadConfig(
            heldout_dir=heldout_dir(), url=f"http://127.0.0.1:{port}/", **config_kwargs
        )
        result = await run_load(config, progress)
    finally:
        await runner.cleanup()
    return result, stub, progress.getvalue()


def test_normal_traffic_sends_labelled_digits() -> None:
    result, stub, progress = asyncio.run(
        _run({"rate": 400.0, "duration": 0, "requests": 30, "concurrency": 4})
    )
    digits = {s.body: s.label for s in heldout_samples(heldout_dir())}
    assert result.sent == 30
    assert len(stub.received) == 30
    assert all(ctype == "image/png" and body in digits for ctype, body in stub.received)
    assert result.ok == result.labelled == 30
    sevens = sum(digits[body] == "7" for _, body in stub.received)
    assert result.correct == sevens
    assert len(result.latencies) == 30
    assert result.errors == Counter()
    assert result.elapsed > 0
    assert "sent 30" in progress.splitlines()[-1]


def test_bad_traffic_is_counted_by_status_and_kind() -> None:
    count = len(bad_samples())
    result, stub, _ = asyncio.run(
        _run({"rate": 400.0, "duration": 0, "requests": count, "concurrency": 4, "mix": "bad"})
    )
    assert result.sent == count
    # One pass over the bad inputs: each is sent once (order shuffled).
    assert sorted(body for _, body in stub.received) == sorted(s.body for s in bad_samples())
    accepted = sum(
        s.content_type == "image/png" and s.body.startswith(b"\x89PNG") for s in bad_samples()
    )
    assert result.ok == accepted
    assert result.labelled == 0
    assert result.errors == Counter({"422 stub_refusal": count - accepted})


def test_unreachable_target_counts_connection_errors() -> None:
    async def scenario() -> LoadResult:
        config = LoadConfig(
            heldout_dir=heldout_dir(),
            url=f"http://127.0.0.1:{closed_port()}",
            rate=200.0,
            duration=0,
            requests=3,
        )
        return await run_load(config, None)

    result = asyncio.run(scenario())
    assert result.sent == 3
    assert result.ok == 0
    assert sum(result.errors.values()) == 3
    assert all(kind.startswith("connection_") for kind in result.errors)


def test_unknown_mix_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown mix"):
        asyncio.run(
            run_load(
                LoadConfig(heldout_dir=heldout_dir(), url="http://127.0.0.1:9", mix="chaos"), None
            )
        )
