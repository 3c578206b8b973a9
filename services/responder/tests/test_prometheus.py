"""The Prometheus client against a real Prometheus (Debian's `prometheus` binary) and
against a port nobody listens on."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from servescope.responder.prometheus import Prometheus, QueryError, Sample
from servescope.telemetry.metrics import ServiceMetrics


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed: apt-get install prometheus (.ci/run installs it)")
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text("global:\n  scrape_interval: 1m\n")
    port = _free_port()
    log = (work / "log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--enable-feature=exemplar-storage",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (work / "log").read_text()
            assert time.monotonic() < deadline, "Prometheus not ready after 30 s"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(15)
        log.close()


def call(url: str, method: str, *args: Any, metrics: ServiceMetrics | None = None) -> Any:
    async def go() -> Any:
        async with aiohttp.ClientSession() as session:
            failures = (
                metrics.counter("servescope_responder_prometheus_query_failures_total")
                if metrics
                else None
            )
            client = Prometheus(session, url, 2.0, failures)
            return await getattr(client, method)(*args)

    return asyncio.run(go())


def test_an_instant_query_gives_its_samples(prometheus_url: str) -> None:
    samples = call(
        prometheus_url, "query", 'label_replace(vector(2), "job", "x", "", "")', time.time()
    )
    assert samples == [Sample({"job": "x"}, 2.0)]
    # A scalar is not a vector: no samples.
    assert call(prometheus_url, "query", "scalar(vector(1))", time.time()) == []


def test_exemplars_of_nothing_are_none(prometheus_url: str) -> None:
    now = time.time()
    assert call(prometheus_url, "exemplars", "up", now - 60, now) == []


def test_a_bad_query_is_an_error_and_is_counted(prometheus_url: str) -> None:
    metrics = ServiceMetrics("responder")
    with pytest.raises(QueryError, match="bad_data"):
        call(prometheus_url, "query", "sum(", time.time(), metrics=metrics)
    assert (
        metrics.registry.get_sample_value(
            "servescope_responder_prometheus_query_failures_total", {"prometheus_api": "query"}
        )
        == 1
    )


def test_an_unreachable_prometheus_is_an_error_and_is_counted() -> None:
    metrics = ServiceMetrics("responder")
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(QueryError, match="is unreachable") as caught:
        call(url, "exemplars", "up", 0.0, 1.0, metrics=metrics)
    assert caught.value.kind == "unavailable"
    assert (
        metrics.registry.get_sample_value(
            "servescope_responder_prometheus_query_failures_total",
            {"prometheus_api": "query_exemplars"},
        )
        == 1
    )


def test_a_server_that_is_not_prometheus_is_an_error(tmp_path: Path) -> None:
    import http.server
    import threading

    class NotPrometheus(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotPrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(QueryError, match="not JSON"):
            call(url, "query", "up", time.time())
    finally:
        server.shutdown()
