"""Traces across the three services, exported over OTLP to a real receiver in the test
(HTTP and gRPC, protobuf decoded), and the local waterfall that finds a slow step."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from servescope.cli.local.services import free_port
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples
from servescope.telemetry.contract import load_contract

pytestmark = pytest.mark.slow
REQUESTS = 5


class Collected:
    """Spans received, flattened to (service, span) pairs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, ProtoSpan]] = []

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append((attrs["service.name"], span))


def http_receiver(collected: Collected) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.path == "/v1/traces", self.path
            assert self.headers["Content-Type"] == "application/x-protobuf"
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            collected.add(request)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()
            self.wfile.write(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


class GrpcTraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collected: Collected) -> None:
        self.collected = collected

    def Export(self, request, context):
        self.collected.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(params=["http/protobuf", "grpc"])
def traced(request, start_stack):
    collected = Collected()
    if request.param == "grpc":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            GrpcTraceService(collected), server
        )
        port = free_port()
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        endpoint, stop = f"http://127.0.0.1:{port}", lambda: server.stop(0)
    else:
        http_server, endpoint = http_receiver(collected)
        stop = http_server.shutdown
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": request.param,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "SERVESCOPE_TRACE_SAMPLE_RATIO": "1.0",
    }
    try:
        stack = start_stack(env={"*": env})
        yield stack, collected
    finally:
        stop()


def wait_for(collected: Collected, predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with collected.lock:
            if predicate(list(collected.spans)):
                return
        time.sleep(0.1)
    raise AssertionError(f"spans never arrived: {len(collected.spans)} collected")


def test_one_request_is_one_trace_across_three_services(traced) -> None:
    stack, collected = traced
    for sample in heldout_samples(heldout_dir())[:REQUESTS]:
        response = httpx.post(
            stack.url + "/v1/predict", content=sample.body, headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 200

    def complete(spans: list[tuple[str, ProtoSpan]]) -> bool:
        return sum(1 for _, s in spans if s.name == "softmax_topk") >= REQUESTS

    wait_for(collected, complete)
    time.sleep(0.5)  # the last batch of the edge's own spans
    traces: dict[bytes, list[tuple[str, ProtoSpan]]] = defaultdict(list)
    for service, span in collected.spans:
        traces[span.trace_id].append((service, span))
    predictions = [t for t in traces.values() if any(s.name == "POST /v1/predict" for _, s in t)]
    assert len(predictions) == REQUESTS

    for spans in predictions:
        by_name = {(svc, span.name): span for svc, span in spans}
        assert {svc for svc, _ in spans} == {"preprocess", "classifier", "postprocess"}
        edge = by_name[("preprocess", "POST /v1/predict")]
        assert edge.kind == ProtoSpan.SPAN_KIND_SERVER
        assert edge.parent_span_id == b""  # the edge starts the trace
        for step in ("decode", "resize", "normalise"):
            assert by_name[("preprocess", step)].parent_span_id == edge.span_id
        clients = [
            s for svc, s in spans if svc == "preprocess" and s.kind == ProtoSpan.SPAN_KIND_CLIENT
        ]
        assert len(clients) == 2
        assert all(c.parent_span_id == edge.span_id for c in clients)
        peers = {
            next(a.value.string_value for a in c.attributes if a.key == "peer.service"): c
            for c in clients
        }
        classifier = by_name[("classifier", "POST /v2/models/{name}/infer")]
        postprocess = by_name[("postprocess", "POST /v1/postprocess")]
        assert classifier.kind == postprocess.kind == ProtoSpan.SPAN_KIND_SERVER
        assert classifier.parent_span_id == peers["classifier"].span_id
        assert postprocess.parent_span_id == peers["postprocess"].span_id
        infer = by_name[("classifier", "infer")]
        assert infer.parent_span_id == classifier.span_id
        assert by_name[("postprocess", "softmax_topk")].parent_span_id == postprocess.span_id
        attrs = {a.key: a.value for a in infer.attributes}
        assert attrs["servescope.model.name"].string_value == "digits-cnn"
        edge_attrs = {a.key: a.value for a in edge.attributes}
        assert edge_attrs["http.route"].string_value == "/v1/predict"
        assert edge_attrs["http.response.status_code"].int_value == 200


def test_span_names_and_attributes_are_in_the_contract(traced) -> None:
    stack, collected = traced
    httpx.post(
        stack.url + "/v1/predict",
        content=heldout_samples(heldout_dir())[0].body,
        headers={"Content-Type": "image/png"},
    )
    httpx.post(stack.url + "/v1/predict", content=b"nope", headers={"Content-Type": "image/png"})
    wait_for(collected, lambda spans: any(s.name == "softmax_topk" for _, s in spans))
    time.sleep(0.5)
    contract = load_contract()
    declared = {}
    for spec in contract.spans:
        for service in spec.services:
            declared.setdefault((service, spec.kind), []).append(spec)
    kinds = {
        ProtoSpan.SPAN_KIND_SERVER: "SERVER",
        ProtoSpan.SPAN_KIND_CLIENT: "CLIENT",
        ProtoSpan.SPAN_KIND_INTERNAL: "INTERNAL",
    }
    for service, span in collected.spans:
        specs = declared[(service, kinds[span.kind])]
        if kinds[span.kind] == "INTERNAL":
            specs = [s for s in specs if s.name == span.name]
        assert specs, (service, span.name)
        allowed = set().union(*(s.attributes for s in specs))
        assert {a.key for a in span.attributes} <= allowed, (service, span.name)
    rejected = [s for svc, s in collected.spans if s.name == "decode" and s.status.code == 2]
    assert rejected, "a rejected input ends its decode span with status ERROR"


def test_trace_slowest_names_the_faulty_service_and_step(start_stack, tmp_path) -> None:
    traces = tmp_path / "traces"
    stack = start_stack(
        env={
            name: {
                "SERVESCOPE_TRACE_FILE": str(traces / f"{name}.jsonl"),
                "SERVESCOPE_TRACE_SAMPLE_RATIO": "1.0",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            }
            for name in ("preprocess", "classifier", "postprocess")
        }
        | {
            "preprocess": {
                "SERVESCOPE_TRACE_FILE": str(traces / "preprocess.jsonl"),
                "SERVESCOPE_TRACE_SAMPLE_RATIO": "1.0",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "SERVESCOPE_FAULT_STAGE": "resize",
                "SERVESCOPE_FAULT_DELAY_SECONDS": "0.3",
            }
        }
    )
    for sample in heldout_samples(heldout_dir())[:3]:
        httpx.post(
            stack.url + "/v1/predict", content=sample.body, headers={"Content-Type": "image/png"}
        )
    time.sleep(1.0)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "servescope.cli",
            "trace",
            "--slowest",
            "1",
            "--dir",
            str(traces),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "services: classifier, postprocess, preprocess" in out
    assert "slowest step: preprocess resize" in out, out
    assert "classifier infer" in out and "postprocess softmax_topk" in out
