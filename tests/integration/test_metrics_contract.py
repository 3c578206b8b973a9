"""/metrics on every live service (the alert responder among them): promtool finds nothing,
the contract holds both ways, labels stay bounded, and drift scores move under drifted
traffic and only then."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import Counter

from servescope.classifier.drift import THRESHOLDS
from servescope.cli.contract_check import check_exposition, family_names
from servescope.cli.local.alerting import ResponderProcess
from servescope.cli.local.services import SERVICES, LocalStack, free_port
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples
from servescope.loadgen.traffic import LoadConfig, run_load
from servescope.postprocess.app import create_app as create_postprocess
from servescope.postprocess.settings import Settings as PostprocessSettings
from servescope.runtime.health import Health
from servescope.telemetry.contract import MetricSpec, load_contract

pytestmark = pytest.mark.slow


def scrape(stack: LocalStack, name: str, openmetrics: bool = False) -> str:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    response = httpx.get(stack.services[name].url + "/metrics", headers=headers, timeout=5)
    assert response.status_code == 200
    return response.text


def send(stack: LocalStack, mix: str, requests: int, seed: int = 0) -> None:
    config = LoadConfig(
        heldout_dir=heldout_dir(),
        url=stack.url,
        rate=1000,
        duration=0,
        requests=requests,
        mix=mix,
        concurrency=4,
        seed=seed,
    )
    result = asyncio.run(run_load(config, progress=None))
    assert result.sent == requests


@pytest.fixture(scope="module")
def busy_stack(module_stack_starter) -> LocalStack:
    """A stack that has served every kind of traffic: digits, bad inputs, unknown paths."""
    stack = module_stack_starter()
    send(stack, "mixed", 60)
    with httpx.Client(base_url=stack.url) as client:
        client.get("/no/such/path")
        client.post("/v1/predict?top_k=0", content=b"", headers={"Content-Type": "image/png"})
    return stack


@pytest.mark.parametrize("service", SERVICES)
def test_promtool_finds_nothing(busy_stack: LocalStack, service: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus (.ci/run installs it)"
    text = scrape(busy_stack, service)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


@pytest.mark.parametrize("service", SERVICES)
def test_live_exposition_matches_contract_both_ways(busy_stack: LocalStack, service: str) -> None:
    text = scrape(busy_stack, service)
    assert check_exposition(service, text) == []
    declared = {spec.name for spec in load_contract().for_service(service)}
    assert family_names(text) == declared


@pytest.fixture(scope="module")
def busy_responder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResponderProcess]:
    """The alert responder as local mode runs it, after a webhook (diagnosed against a
    Prometheus nobody answers for), a refused one and an unknown path."""
    process = ResponderProcess(
        free_port(),
        tmp_path_factory.mktemp("responder"),
        f"http://127.0.0.1:{free_port()}",
        extra_env={"SERVESCOPE_RESPONDER_QUERY_TIMEOUT_SECONDS": "2"},
    )
    process.start()
    try:
        alert = {
            "status": "firing",
            "labels": {"alertname": "ServescopeP95LatencyHigh", "category": "latency"},
            "startsAt": "2026-05-01T10:00:00Z",
        }
        with httpx.Client(base_url=process.url, timeout=5) as client:
            assert client.post("/alerts", json={"alerts": [alert]}).status_code == 200
            assert client.post("/alerts", content=b"not json").status_code == 400
            assert client.get("/no/such/path").status_code == 404
        deadline = time.monotonic() + 15
        while not process.incidents():
            assert time.monotonic() < deadline, "no incident note after 15 s"
            time.sleep(0.05)
        yield process
    finally:
        process.stop()


def scrape_responder(process: ResponderProcess, openmetrics: bool = False) -> str:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    response = httpx.get(process.url + "/metrics", headers=headers, timeout=5)
    assert response.status_code == 200
    return response.text


def test_promtool_finds_nothing_on_the_responder(busy_responder: ResponderProcess) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus (.ci/run installs it)"
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=scrape_responder(busy_responder),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_the_responders_exposition_matches_the_contract_both_ways(
    busy_responder: ResponderProcess,
) -> None:
    text = scrape_responder(busy_responder)
    assert check_exposition("responder", text) == []
    declared = {spec.name for spec in load_contract().for_service("responder")}
    assert family_names(text) == declared
    assert 'servescope_responder_notes_written_total{category="latency"} 1.0' in text
    assert 'servescope_rejected_inputs_total{reason="invalid_json"} 1.0' in text
    # The diagnosis is timed inside its span: the histogram's exemplar leads to the trace.
    openmetrics = scrape_responder(busy_responder, openmetrics=True)
    assert re.search(
        r'servescope_responder_diagnosis_duration_seconds_bucket\{[^}]*\} 1\.0 # \{span_id="[0-9a-f]{16}",trace_id="[0-9a-f]{32}"\}',
        openmetrics,
    ), openmetrics


def test_a_metric_added_in_code_but_not_in_the_contract_fails_the_check() -> None:
    app = create_postprocess(PostprocessSettings(), Health("postprocess", "test"))
    with TestClient(app) as client:
        text = client.get("/metrics").text
        assert check_exposition("postprocess", text) == []
        # Exactly what a contributor might do: a quick counter straight on the registry.
        Counter("servescope_debug_hits", "undeclared", registry=app.state.metrics.registry).inc()
        problems = check_exposition("postprocess", client.get("/metrics").text)
    assert problems == [
        "servescope_debug_hits_total: exposed but not declared in the contract for postprocess"
    ]


def test_a_declared_metric_that_is_not_exposed_fails_the_check(busy_stack: LocalStack) -> None:
    contract = load_contract()
    extra = MetricSpec(
        "servescope_phantom_seconds", "gauge", "seconds", "never", ("classifier",), ()
    )
    widened = dataclasses.replace(contract, metrics=(*contract.metrics, extra))
    problems = check_exposition("classifier", scrape(busy_stack, "classifier"), widened)
    assert problems == ["servescope_phantom_seconds: declared for classifier but not exposed"]


def test_asking_for_an_undeclared_metric_fails_at_startup() -> None:
    app = create_postprocess(PostprocessSettings(), Health("postprocess", "test"))
    with pytest.raises(KeyError, match="not declared"):
        app.state.metrics.histogram("servescope_made_up_seconds")


def test_exemplars_carry_the_callers_trace_id(busy_stack: LocalStack) -> None:
    trace_id = uuid.uuid4().hex
    response = httpx.post(
        busy_stack.url + "/v1/predict",
        content=heldout_samples(heldout_dir())[0].body,
        headers={"Content-Type": "image/png", "traceparent": f"00-{trace_id}-{'1' * 16}-01"},
    )
    assert response.status_code == 200
    # The edge and, through propagation, the classifier both tag latency with the trace, on
    # the HTTP request histogram itself (not only on the stage histograms).
    for service in ("preprocess", "classifier"):
        text = scrape(busy_stack, service, openmetrics=True)
        tagged = [line for line in text.splitlines() if f'trace_id="{trace_id}"' in line]
        assert any(
            line.startswith("http_server_request_duration_seconds_bucket{") for line in tagged
        ), f"{service}: no HTTP request exemplar for the trace; tagged: {tagged}"
    assert f'trace_id="{trace_id}"' not in scrape(busy_stack, "preprocess")  # text format: none


def test_an_unsampled_request_leaves_no_exemplar(busy_stack: LocalStack) -> None:
    """An exemplar must lead to a trace that exists: never one the caller did not sample."""
    trace_id = uuid.uuid4().hex
    response = httpx.post(
        busy_stack.url + "/v1/predict",
        content=heldout_samples(heldout_dir())[0].body,
        headers={"Content-Type": "image/png", "traceparent": f"00-{trace_id}-{'1' * 16}-00"},
    )
    assert response.status_code == 200
    for service in ("preprocess", "classifier"):
        assert trace_id not in scrape(busy_stack, service, openmetrics=True), service


def test_a_thousand_random_paths_add_no_series(start_stack) -> None:
    stack = start_stack(names=SERVICES)

    def series() -> set[str]:
        text = scrape(stack, "preprocess")
        return {
            line.split(" ")[0]
            for line in text.splitlines()
            if line.startswith("http_server_request_duration_seconds_bucket")
        }

    with httpx.Client(base_url=stack.url) as client:
        for _ in range(3):
            client.get(f"/{uuid.uuid4().hex}")
        series()  # the first scrape adds the /metrics route's own series
        before = series()
        for i in range(1000):
            assert client.get(f"/{uuid.uuid4().hex}/{i}").status_code == 404
    after = series()
    assert after == before
    routes = {re.search(r'http_route="([^"]*)"', s).group(1) for s in after}
    assert "unmatched" in routes
    assert not any(route.count("/") > 3 and "{" not in route for route in routes)


def test_drift_scores_cross_their_thresholds_under_drift_and_only_then(start_stack) -> None:
    stack = start_stack(names=SERVICES)

    def scores() -> dict[str, float]:
        text = scrape(stack, "classifier")
        return {
            signal: float(value)
            for signal, value in re.findall(
                r'servescope_input_drift_score\{signal="(\w+)"\} (\S+)', text
            )
        }

    send(stack, "normal", 300)
    normal = scores()
    assert set(normal) == set(THRESHOLDS)
    assert all(normal[s] < THRESHOLDS[s] for s in THRESHOLDS), normal
    assert normal["class_psi"] > 0  # the window is full: the signal is live, just low

    # Documented (docs/telemetry.md): with the default window of 100 inputs, drifted traffic
    # is flagged within 100 requests of its onset, however long normal traffic ran before.
    crossed: dict[str, int] = {}
    for sent in range(10, 101, 10):
        send(stack, "drift", 10, seed=sent)
        for signal, value in scores().items():
            if value > THRESHOLDS[signal]:
                crossed.setdefault(signal, sent)
    assert crossed.get("mean_intensity_shift", 999) <= 100, crossed
    assert crossed.get("class_psi", 999) <= 100, crossed
    print("drift flagged after", crossed)
