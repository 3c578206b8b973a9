"""Structured logs: every line inside a request carries its trace id, INFO is sampled per
trace at the source (the same traces in every service), WARNING and ERROR always kept,
and every field is declared in the telemetry contract."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import httpx
import pytest

from servescope.cli.local.services import SERVICES, LocalStack
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples
from servescope.loadgen.traffic import LoadConfig, run_load
from servescope.telemetry.contract import load_contract

pytestmark = pytest.mark.slow
REQUESTS = 2000
RATIO = 0.1


def read_lines(stack: LocalStack, name: str) -> list[dict]:
    lines = []
    for raw in stack.services[name].log_path.read_text().splitlines():
        lines.append(json.loads(raw))  # every line is one JSON object
    return lines


def test_sampled_logs_keep_whole_traces_and_every_warning(start_stack) -> None:
    stack = start_stack(
        env={
            "*": {
                "SERVESCOPE_LOG_INFO_SAMPLE_RATIO": str(RATIO),
                "SERVESCOPE_TRACE_SAMPLE_RATIO": "0.1",
            }
        }
    )
    config = LoadConfig(
        heldout_dir=heldout_dir(),
        url=stack.url,
        rate=2000,
        duration=0,
        requests=REQUESTS,
        concurrency=8,
        mix="mixed",
        bad_fraction=0.1,
    )
    result = asyncio.run(run_load(config, progress=None))
    assert result.sent == REQUESTS and result.ok > 0
    rejected = sum(n for kind, n in result.errors.items() if kind.startswith(("4",)))
    assert rejected > 50
    # Errors: the postprocess stage gone, so the edge answers 503 and logs at ERROR.
    stack.services["postprocess"].stop()
    failures = 20
    for sample in heldout_samples(heldout_dir())[:failures]:
        response = httpx.post(
            stack.url + "/v1/predict", content=sample.body, headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 503
    stack.stop()  # flush and close the logs

    logs = {name: read_lines(stack, name) for name in SERVICES}
    edge = logs["preprocess"]
    predict_lines = [entry for entry in edge if entry.get("http_route") == "/v1/predict"]
    # Every line written inside a request names its trace.
    request_events = {"http_request", "request_rejected", "request_failed"}
    for name, lines in logs.items():
        for line in lines:
            if line["event"] in request_events:
                assert len(line.get("trace_id", "")) == 32, (name, line)
                assert len(line.get("span_id", "")) == 16, (name, line)
    # INFO kept for RATIO of traces, +- 3 points.
    kept_traces = {entry["trace_id"] for entry in predict_lines}
    share = len(kept_traces) / (REQUESTS + failures)
    assert abs(share - RATIO) <= 0.03, share
    # Every WARNING and ERROR kept: one per rejected input, one per failed call.
    assert sum(1 for entry in edge if entry["event"] == "request_rejected") == rejected
    failed = [entry for entry in edge if entry["event"] == "request_failed"]
    assert len(failed) == failures
    assert all(
        entry["level"] == "error" and entry["kind"] == "postprocess_unavailable" for entry in failed
    )
    # A kept trace has all its lines in all three services; a dropped one has none.
    downstream = {name: defaultdict(list) for name in ("classifier", "postprocess")}
    # The requests the edge makes for predictions (not its own metadata refreshes, which
    # start traces of their own).
    routes = {"classifier": "/v2/models/{name}/infer", "postprocess": "/v1/postprocess"}
    for name in downstream:
        for line in logs[name]:
            if line["event"] == "http_request" and line["http_route"] == routes[name]:
                downstream[name][line["trace_id"]].append(line)
    good = {
        entry["trace_id"] for entry in predict_lines if entry["http_response_status_code"] == 200
    }
    assert good
    for name, by_trace in downstream.items():
        assert good <= set(by_trace), (
            f"{name} lost lines of {len(good - set(by_trace))} kept traces"
        )
        assert set(by_trace) <= kept_traces, f"{name} kept lines of traces the edge dropped"
    # The counters agree with what was written.
    assert all(entry["event"] != "http_request" or entry["level"] == "info" for entry in edge)


def test_every_log_field_is_declared_and_no_payload_leaks(start_stack) -> None:
    stack = start_stack(env={"*": {"SERVESCOPE_LOG_INFO_SAMPLE_RATIO": "1.0"}})
    secret_marker = b"PAYLOAD-MARKER-123"
    digit = heldout_samples(heldout_dir())[0].body
    httpx.post(stack.url + "/v1/predict", content=digit, headers={"Content-Type": "image/png"})
    httpx.post(
        stack.url + "/v1/predict", content=secret_marker, headers={"Content-Type": "image/png"}
    )
    httpx.post(
        stack.url + "/v1/predict", content=secret_marker, headers={"Content-Type": "text/plain"}
    )
    stack.stop()
    declared = set(load_contract().log_fields or {})
    for name in SERVICES:
        text = stack.services[name].log_path.read_text()
        assert secret_marker.decode() not in text
        for line in map(json.loads, text.splitlines()):
            assert set(line) <= declared, (name, set(line) - declared)
    access = [
        entry for entry in read_lines(stack, "classifier") if entry["event"] == "http_request"
    ]
    assert any(entry.get("model_version") == "1" for entry in access), (
        "access lines carry the model version"
    )
