"""Nothing lost at shutdown: after SIGTERM, every span of every sampled request reaches the
OTLP endpoint and every request's log line is in the log file, although the span exporter
batches (it sends every few seconds) and the requests end just before the signal."""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from servescope.cli.local.process import free_port
from servescope.cli.local.services import SERVICES, LocalStack
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples
from servescope.telemetry.settings import TelemetrySettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

REQUESTS = 20
FLUSH_TIMEOUT_SECONDS = TelemetrySettings().trace_flush_timeout_seconds


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver that keeps (service, trace id) of every span."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.spans: set[tuple[str, str]] = set()
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["content-length"])))
        with self.server.lock:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.server.spans.add((attributes["service.name"], span.trace_id.hex()))
        body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_after_sigterm_every_sampled_span_is_exported_and_every_line_logged(
    start_stack, receiver: Receiver
) -> None:
    stack: LocalStack = start_stack(
        env={
            "*": {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "SERVESCOPE_TRACE_SAMPLE_RATIO": "1",
                "SERVESCOPE_LOG_INFO_SAMPLE_RATIO": "1",
            }
        }
    )
    digit = heldout_samples(heldout_dir())[0]
    trace_ids = [uuid.uuid4().hex for _ in range(REQUESTS)]
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        for trace_id in trace_ids:
            response = client.post(
                "/v1/predict",
                content=digit.body,
                headers={
                    "content-type": "image/png",
                    "traceparent": f"00-{trace_id}-{'2' * 16}-01",
                },
            )
            assert response.status_code == 200
    # At once, while the exporters still hold the last batch (they send every 5 s).
    for name in SERVICES:
        stack.services[name].send_signal(signal.SIGTERM)
    for name in SERVICES:
        process = stack.services[name].process
        assert process is not None
        assert process.wait(timeout=30) == 0, stack.services[name].log_tail()

    for name in SERVICES:
        missing = [t for t in trace_ids if (name, t) not in receiver.spans]
        assert not missing, f"{name}: {len(missing)} of {REQUESTS} traces have no span exported"
        log = stack.services[name].log_path.read_text()
        unlogged = [t for t in trace_ids if f'"trace_id":"{t}"' not in log.replace(" ", "")]
        assert not unlogged, f"{name}: {len(unlogged)} of {REQUESTS} requests left no log line"


@pytest.mark.parametrize("backend", ["hangs", "refuses"])
def test_a_dead_collector_neither_fails_requests_nor_holds_the_exit(
    start_stack, backend: str
) -> None:
    """Before the bound, a collector that hung held each process 20 to 30 s at exit."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # never accepted: connections complete, requests never get an answer
    port = hole.getsockname()[1]
    if backend == "refuses":
        hole.close()
    try:
        stack: LocalStack = start_stack(
            env={
                "*": {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "SERVESCOPE_TRACE_SAMPLE_RATIO": "1",
                }
            }
        )
        digit = heldout_samples(heldout_dir())[0]
        with httpx.Client(base_url=stack.url, timeout=10) as client:
            for _ in range(100):
                response = client.post(
                    "/v1/predict", content=digit.body, headers={"content-type": "image/png"}
                )
                assert response.status_code == 200
        started = time.monotonic()
        for name in SERVICES:
            stack.services[name].send_signal(signal.SIGTERM)
        for name in SERVICES:
            process = stack.services[name].process
            assert process is not None
            assert process.wait(timeout=60) == 0, stack.services[name].log_tail()
        took = time.monotonic() - started
        bound = FLUSH_TIMEOUT_SECONDS + 5  # the flush bound, plus the server's own shutdown
        assert took < bound, f"exit took {took:.1f} s with a collector that {backend}"
    finally:
        hole.close()
