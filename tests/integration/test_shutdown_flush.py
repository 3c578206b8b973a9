"""Nothing lost at shutdown: after SIGTERM, every span of every sampled request reaches the
OTLP endpoint and every request's log line is in the log file, although the span exporter
batches (it sends every few seconds) and the requests end just before the signal."""

from __future__ import annotations

import signal
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client.parser import text_string_to_metric_families

from servescope.cli.local.process import free_port
from servescope.cli.local.services import SERVICES, LocalStack
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples
from servescope.telemetry.settings import TelemetrySettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

REQUESTS = 20
ROUNDS, WARM_UP = 200, 20
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


def _otlp_env(port: int) -> dict[str, dict[str, str]]:
    return {
        "*": {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "SERVESCOPE_TRACE_SAMPLE_RATIO": "1",
        }
    }


def _spans_lost(url: str) -> float:
    value = 0.0
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "servescope_spans_lost_total" and sample.labels == {
                "error_type": "export_failed"
            }:
                value = sample.value
    return value


def test_a_dead_collector_neither_slows_serving_nor_holds_the_exit(
    start_stack, receiver: Receiver
) -> None:
    """Three stacks side by side, every trace kept: one exporting to a healthy receiver, one
    to a collector that accepts and never answers, one to a port that refuses. Requests go
    round-robin, so the machine's noise falls on all three alike."""
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(64)  # never accepted: connections complete, requests are never answered
    refusing = free_port()
    try:
        stacks: dict[str, LocalStack] = {
            "healthy": start_stack(env=_otlp_env(receiver.server_port)),
            "hangs": start_stack(env=_otlp_env(hanging.getsockname()[1])),
            "refuses": start_stack(env=_otlp_env(refusing)),
        }
        digit = heldout_samples(heldout_dir())[0]
        latencies: dict[str, list[float]] = {name: [] for name in stacks}
        clients = {name: httpx.Client(base_url=s.url, timeout=10) for name, s in stacks.items()}
        try:
            for round_number in range(ROUNDS + WARM_UP):
                for name, client in clients.items():
                    started = time.perf_counter()
                    response = client.post(
                        "/v1/predict", content=digit.body, headers={"content-type": "image/png"}
                    )
                    assert response.status_code == 200, (name, response.text)
                    if round_number >= WARM_UP:
                        latencies[name].append(time.perf_counter() - started)
        finally:
            for client in clients.values():
                client.close()
        p95 = {name: statistics.quantiles(values, n=20)[-1] for name, values in latencies.items()}
        print("p95 ms:", {name: round(value * 1e3, 2) for name, value in p95.items()})
        for dead in ("hangs", "refuses"):
            # The goal is 1.10; a loaded CI machine gets slack, the figure is reported.
            assert p95[dead] <= 1.5 * p95["healthy"], p95
        # What the dead collectors did not take is counted, per service; nothing was lost on
        # the healthy one. The first export waits the processor's 5 s schedule, then gives up
        # after the 2 s export timeout.
        export_failed = {name: _spans_lost(stack.url) for name, stack in stacks.items()}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            export_failed[dead] > 0 for dead in ("hangs", "refuses")
        ):
            time.sleep(1)
            export_failed = {name: _spans_lost(stack.url) for name, stack in stacks.items()}
        print("spans lost at the edge, export_failed:", export_failed)
        assert export_failed["hangs"] > 0 and export_failed["refuses"] > 0, export_failed
        assert export_failed["healthy"] == 0, export_failed

        exits: dict[str, float] = {}
        for dead in ("hangs", "refuses"):
            stack = stacks[dead]
            started = time.monotonic()
            for name in SERVICES:
                stack.services[name].send_signal(signal.SIGTERM)
            for name in SERVICES:
                process = stack.services[name].process
                assert process is not None
                assert process.wait(timeout=60) == 0, stack.services[name].log_tail()
            exits[dead] = time.monotonic() - started
        print("exit after SIGTERM, s:", {name: round(value, 1) for name, value in exits.items()})
        bound = FLUSH_TIMEOUT_SECONDS + 5  # the flush bound, plus the server's own shutdown
        assert all(took < bound for took in exits.values()), exits
    finally:
        hanging.close()
