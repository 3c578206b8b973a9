"""A real Prometheus (Debian's binary) scrapes the live services and answers the questions an
on-call engineer asks first, with plausible values; exemplars arrive with trace ids."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from servescope.cli.local.services import PrometheusProcess, free_port, prometheus_config
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples
from servescope.loadgen.traffic import LoadConfig, run_load

pytestmark = pytest.mark.slow

WINDOW = "1m"


@pytest.fixture(scope="module")
def observed(module_stack_starter, tmp_path_factory):
    assert PrometheusProcess.available(), (
        "prometheus is missing: apt-get install prometheus (.ci/run installs it)"
    )
    stack = module_stack_starter()
    port = free_port()
    prometheus = PrometheusProcess(
        port, tmp_path_factory.mktemp("prometheus"), prometheus_config(stack.ports, port, "1s")
    )
    prometheus.start()
    try:
        prometheus.wait_for_targets()
        trace_ids = [uuid.uuid4().hex for _ in range(5)]
        for trace_id in trace_ids:
            httpx.post(
                stack.url + "/v1/predict",
                content=heldout_samples(heldout_dir())[1].body,
                headers={
                    "Content-Type": "image/png",
                    "traceparent": f"00-{trace_id}-{'2' * 16}-01",
                },
            ).raise_for_status()
        # A bucket keeps only its latest exemplar: let Prometheus scrape these (every 1 s)
        # before the traffic below, whose sampled requests would replace them.
        time.sleep(2.5)
        config = LoadConfig(
            heldout_dir=heldout_dir(),
            url=stack.url,
            rate=60,
            duration=4,
            mix="mixed",
            bad_fraction=0.2,
        )
        result = asyncio.run(run_load(config, progress=None))
        assert result.ok > 100
        time.sleep(3)  # a few more scrapes, so every rate() has two points after the traffic
        yield prometheus, trace_ids
    finally:
        prometheus.stop()


def query(prometheus: PrometheusProcess, promql: str) -> list[dict]:
    response = httpx.get(prometheus.url + "/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", body
    return body["data"]["result"]


def values(result: list[dict], label: str | None = None) -> dict[str, float]:
    return {(r["metric"].get(label, "") if label else ""): float(r["value"][1]) for r in result}


def test_request_rate_by_service(observed) -> None:
    prometheus, _ = observed
    rates = values(
        query(
            prometheus, f"sum by (job) (rate(http_server_request_duration_seconds_count[{WINDOW}]))"
        ),
        "job",
    )
    assert set(rates) >= {"preprocess", "classifier", "postprocess"}
    assert all(rate > 0 for rate in rates.values()), rates
    # Every prediction that passes decoding calls postprocess once; bad inputs never do.
    # Compared on the counters themselves (traffic has stopped), not on rates, whose
    # extrapolation depends on each target's scrape phase.
    totals = values(
        query(
            prometheus,
            "sum by (job) (http_server_request_duration_seconds_count"
            '{http_route=~"/v1/predict|/v1/postprocess"})',
        ),
        "job",
    )
    assert totals["preprocess"] > totals["postprocess"] > 0, totals


def test_error_ratio_at_the_edge(observed) -> None:
    prometheus, _ = observed
    ratio = values(
        query(
            prometheus,
            'sum(rate(http_server_request_duration_seconds_count{job="preprocess",'
            f'http_route="/v1/predict",http_response_status_code=~"[45].."}}[{WINDOW}]))'
            ' / sum(rate(http_server_request_duration_seconds_count{job="preprocess",'
            f'http_route="/v1/predict"}}[{WINDOW}]))',
        )
    )[""]
    assert 0.05 < ratio < 0.5, ratio  # 20% bad inputs were sent


def test_p95_end_to_end_and_per_stage(observed) -> None:
    prometheus, _ = observed
    p95 = values(
        query(
            prometheus,
            "histogram_quantile(0.95, sum by (le) (rate("
            f'servescope_stage_duration_seconds_bucket{{stage="end_to_end"}}[{WINDOW}])))',
        )
    )[""]
    assert 0 < p95 < 1.0, p95
    stages = values(
        query(
            prometheus,
            "histogram_quantile(0.95, sum by (le, stage) (rate("
            f"servescope_stage_duration_seconds_bucket[{WINDOW}])))",
        ),
        "stage",
    )
    assert set(stages) == {"decode", "preprocess", "infer", "postprocess", "end_to_end"}
    assert all(0 < v <= stages["end_to_end"] * 1.01 + 0.001 for v in stages.values()), stages


def test_confidence_median_and_predictions_by_class(observed) -> None:
    prometheus, _ = observed
    median = values(
        query(
            prometheus,
            "histogram_quantile(0.5, sum by (le) (rate("
            f"servescope_prediction_confidence_ratio_bucket[{WINDOW}])))",
        )
    )[""]
    assert 0.5 < median <= 1.0, median  # a 99%-accurate, calibrated model is confident
    by_class = values(
        query(
            prometheus, f"sum by (class_label) (increase(servescope_predictions_total[{WINDOW}]))"
        ),
        "class_label",
    )
    assert set(by_class) == {str(d) for d in range(10)}, by_class


def test_drift_score_is_scraped(observed) -> None:
    prometheus, _ = observed
    drift = values(query(prometheus, "servescope_input_drift_score"), "signal")
    assert set(drift) == {"pixel_psi", "class_psi", "mean_intensity_shift"}
    assert drift["pixel_psi"] < 0.25  # normal digits and bad inputs only: no drift
    assert values(query(prometheus, "servescope_drift_window_inputs"))[""] > 20


def test_exemplars_reach_prometheus_with_trace_ids(observed) -> None:
    prometheus, trace_ids = observed
    now = time.time()
    response = httpx.get(
        prometheus.url + "/api/v1/query_exemplars",
        params={
            "query": 'servescope_stage_duration_seconds_bucket{stage="end_to_end"}',
            "start": now - 300,
            "end": now,
        },
        timeout=10,
    )
    body = response.json()
    assert body["status"] == "success", body
    seen = {e["labels"].get("trace_id") for series in body["data"] for e in series["exemplars"]}
    assert seen & set(trace_ids), (seen, trace_ids)
