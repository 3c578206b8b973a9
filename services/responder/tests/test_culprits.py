"""Culprits from query results, written out by hand as Prometheus would return them."""

from __future__ import annotations

from servescope.responder import culprits as c
from servescope.responder.playbooks import CheckResult
from servescope.responder.prometheus import Sample


def result(key: str, *samples: tuple[dict[str, str], float]) -> CheckResult:
    return CheckResult(key, key, "", [Sample(labels, value) for labels, value in samples])


def results(*items: CheckResult) -> dict[str, CheckResult]:
    return {item.key: item for item in items}


def test_a_slow_resize_names_preprocess_its_stage_and_the_step() -> None:
    found = c.latency_culprit(
        results(
            result(
                "stage_p95",
                ({"stage": "decode"}, 0.0004),
                ({"stage": "preprocess"}, 0.31),
                ({"stage": "infer"}, 0.004),
                ({"stage": "postprocess"}, 0.002),
                ({"stage": "end_to_end"}, 0.32),
            ),
            result(
                "faults",
                ({"job": "preprocess", "kind": "delay", "step": "resize"}, 0.3),
                ({"job": "classifier", "kind": "delay", "step": "infer"}, 0.1),
            ),
        ),
        "preprocess",
    )
    assert (found.service, found.stage, found.step) == ("preprocess", "preprocess", "resize")
    assert "97% of the end-to-end p95" in found.summary
    assert any("step resize delayed by 300 ms" in e for e in found.evidence)


def test_a_fault_in_another_service_is_not_the_step() -> None:
    found = c.latency_culprit(
        results(
            result("stage_p95", ({"stage": "preprocess"}, 0.3), ({"stage": "infer"}, 0.01)),
            result("faults", ({"job": "classifier", "kind": "delay", "step": "infer"}, 0.5)),
        ),
        "preprocess",
    )
    assert (found.service, found.stage, found.step) == ("preprocess", "preprocess", None)


def test_a_cpu_fault_names_its_step_and_other_kinds_do_not() -> None:
    stages = result("stage_p95", ({"stage": "preprocess"}, 0.3), ({"stage": "end_to_end"}, 0.31))
    cpu = c.latency_culprit(
        results(
            stages,
            result("faults", ({"job": "preprocess", "kind": "cpu", "step": "normalise"}, 0.25)),
        ),
        "preprocess",
    )
    assert cpu.step == "normalise"
    assert any("step normalise burning CPU for 250 ms" in e for e in cpu.evidence)
    leak = c.latency_culprit(
        results(
            stages, result("faults", ({"job": "preprocess", "kind": "leak", "step": "resize"}, 1e6))
        ),
        "preprocess",
    )
    assert leak.step is None


def test_a_slow_infer_stage_tells_the_model_from_the_network() -> None:
    slow_infer = result("stage_p95", ({"stage": "infer"}, 0.4), ({"stage": "end_to_end"}, 0.41))
    network = c.latency_culprit(
        results(
            slow_infer,
            result("server_p95", ({"job": "classifier"}, 0.01)),
            result("client_p95", ({"peer_service": "classifier"}, 0.4)),
        ),
        "preprocess",
    )
    assert (network.service, network.stage, network.step) == ("classifier", "infer", "network")
    assert "lost between the services" in network.summary
    model = c.latency_culprit(
        results(
            slow_infer,
            result("server_p95", ({"job": "classifier"}, 0.39)),
            result("client_p95", ({"peer_service": "classifier"}, 0.4)),
            result("inference_p95", ({}, 0.35)),
        ),
        "preprocess",
    )
    assert (model.service, model.step) == ("classifier", c.MODEL_STEP)


def test_no_stage_latency_falls_back_to_the_alerts_service() -> None:
    found = c.latency_culprit({}, "preprocess")
    assert (found.service, found.stage) == ("preprocess", None)
    assert "no per-stage latency" in found.summary


def test_failing_calls_name_the_downstream_and_the_outcome() -> None:
    found = c.errors_culprit(
        results(
            result("up", ({"job": "preprocess"}, 1), ({"job": "classifier"}, 1)),
            result("ready", ({"job": "classifier"}, 1)),
            result(
                "outbound_failures",
                ({"peer_service": "classifier", "outcome": "timeout"}, 2.5),
                ({"peer_service": "postprocess", "outcome": "error"}, 0.1),
            ),
            result("error_ratio", ({"job": "preprocess"}, 0.2)),
        ),
        "preprocess",
    )
    assert (found.service, found.stage, found.step) == ("classifier", "infer", "timeout")
    postprocess = c.errors_culprit(
        results(
            result("outbound_failures", ({"peer_service": "postprocess", "outcome": "error"}, 1))
        ),
        "preprocess",
    )
    assert (postprocess.service, postprocess.stage) == ("postprocess", "postprocess")


def test_a_down_downstream_is_the_culprit_before_the_edge_that_reports_it() -> None:
    found = c.errors_culprit(
        results(
            result("up", ({"job": "preprocess"}, 1), ({"job": "postprocess"}, 0)),
            result("error_ratio", ({"job": "preprocess"}, 0.3)),
        ),
        "preprocess",
    )
    assert found.service == "postprocess" and "down" in found.summary


def test_server_errors_name_the_deepest_failing_service_and_its_route() -> None:
    found = c.errors_culprit(
        results(
            result("error_ratio", ({"job": "preprocess"}, 0.2), ({"job": "classifier"}, 0.2)),
            result(
                "errors_by_route",
                (
                    {
                        "job": "classifier",
                        "http_route": "/v2/models/{name}/infer",
                        "http_response_status_code": "500",
                    },
                    1.0,
                ),
            ),
        ),
        "preprocess",
    )
    assert found.service == "classifier"
    assert "on /v2/models/{name}/infer (500)" in found.summary


def test_an_injected_error_fault_names_its_step_and_only_in_its_own_service() -> None:
    ratio = result("error_ratio", ({"job": "preprocess"}, 0.3), ({"job": "classifier"}, 0.3))
    outbound = result("outbound_failures", ({"peer_service": "classifier", "outcome": "error"}, 3))
    faults = result(
        "faults", ({"job": "classifier", "kind": "error", "step": "infer", "service": "x"}, 0.5)
    )
    found = c.errors_culprit(results(ratio, outbound, faults), "preprocess")
    assert (found.service, found.step) == ("classifier", "infer")
    assert any("50% of requests fail at step infer" in e for e in found.evidence)
    # A delay fault, or an error fault in another service, says nothing about these errors.
    other = result(
        "faults",
        ({"job": "classifier", "kind": "delay", "step": "infer"}, 0.5),
        ({"job": "postprocess", "kind": "error", "step": "softmax_topk"}, 0.5),
    )
    found = c.errors_culprit(results(ratio, outbound, other), "preprocess")
    assert (found.service, found.step) == ("classifier", "error")


def test_drift_names_the_signals_and_puts_the_cause_upstream() -> None:
    found = c.model_culprit(
        results(
            result(
                "drift",
                ({"signal": "pixel_psi"}, 0.1),
                ({"signal": "class_psi"}, 0.4),
                ({"signal": "mean_intensity_shift"}, 0.15),
            ),
            result("mean_confidence", ({}, 0.95)),
        ),
        "classifier",
    )
    assert (found.service, found.stage, found.step) == (
        "classifier",
        "inputs",
        "class_psi,mean_intensity_shift",
    )


def test_several_model_versions_are_a_model_change() -> None:
    found = c.model_culprit(
        results(
            result(
                "model_info",
                ({"model_name": "digits", "model_version": "1"}, 1),
                ({"model_name": "digits", "model_version": "2"}, 1),
            )
        ),
        "classifier",
    )
    assert (found.service, found.stage) == ("classifier", "model")
    assert "several versions" in found.summary


def test_memory_culprit_tells_rss_from_page_cache() -> None:
    mib = 1024 * 1024
    labels = {"container": "classifier", "pod": "p1"}

    def memory(rss: float, cache: float) -> c.Culprit:
        return c.saturation_culprit(
            results(
                result("memory_limit", (labels, 256 * mib)),
                result("working_set", (labels, rss + cache)),
                result("rss", (labels, rss)),
                result("cache", (labels, cache)),
            ),
            {"alertname": "ServescopeContainerMemoryNearLimit", **labels},
        )

    assert "RSS" in memory(240 * mib, 5 * mib).summary
    assert "page cache" in memory(40 * mib, 200 * mib).summary
    assert memory(240 * mib, 5 * mib).step == "memory"


def test_no_traffic_points_upstream_of_the_edge() -> None:
    found = c.availability_culprit(
        results(result("up", ({"job": "preprocess", "instance": "a"}, 1))),
        "preprocess",
        "ServescopeNoTraffic",
    )
    assert (found.service, found.step) == ("preprocess", "ingress")
    assert "upstream of preprocess" in found.summary


def test_find_culprit_dispatches_on_the_category() -> None:
    alert = {"labels": {"category": "nothing-we-know", "service": "postprocess"}}
    found = c.find_culprit(alert, {})
    assert found.service == "postprocess" and "no playbook" in found.summary
    down = {"labels": {"category": "availability", "job": "classifier", "alertname": "X"}}
    assert c.find_culprit(down, results(result("up", ({"job": "classifier"}, 0)))).service == (
        "classifier"
    )


def test_exemplars_come_from_the_culprits_stage_or_its_failing_requests() -> None:
    slow = c.Culprit("preprocess", "preprocess", "resize")
    assert c.exemplar_query({"labels": {"category": "latency"}}, slow) == (
        'servescope_stage_duration_seconds_bucket{stage="preprocess"}'
    )
    assert c.exemplar_query({"labels": {}}, c.Culprit(None)) == (
        'servescope_stage_duration_seconds_bucket{stage="end_to_end"}'
    )
    failing = c.exemplar_query({"labels": {"category": "errors"}}, c.Culprit('cl"x'))
    assert failing == (
        'http_server_request_duration_seconds_bucket{job="cl\\"x", http_response_status_code=~"5.."}'
    )


def test_the_pipelines_facts_come_from_the_telemetry_contract() -> None:
    from servescope.telemetry.pipeline import PIPELINE

    assert c.STAGE_SERVICE["infer"] == "classifier"
    assert c.STEP_STAGE["resize"] == "preprocess"
    assert c.EDGE.name == "preprocess" and c.TOTAL == "end_to_end"
    assert dict(c.DRIFT_THRESHOLDS) == dict(PIPELINE.drift_thresholds)
    assert min(c.DEPTH, key=c.DEPTH.__getitem__) == PIPELINE.deepest_first[0]
