"""The responder: culprits from query results, and the webhook receiver as a process.

The culprit functions are pure: they get the query results (here written out by hand, as
Prometheus would return them) and name a service, stage and step. The process tests post
Alertmanager's webhook payload to a real responder; the end-to-end test
(test_end_to_end.py) runs it against a real Prometheus and Alertmanager.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from servescope.cli.local.alerting import ResponderProcess
from servescope.cli.local.services import free_port
from servescope.cli.slo import check_expression
from servescope.responder import app as r
from servescope.telemetry.contract import load_contract

from .conftest import RUNBOOKS_DIR


def result(key: str, *samples: tuple[dict[str, str], float]) -> r.CheckResult:
    return r.CheckResult(key, key, "", [r.Sample(labels, value) for labels, value in samples])


def results(*items: r.CheckResult) -> dict[str, r.CheckResult]:
    return {item.key: item for item in items}


def test_every_diagnostic_query_reads_declared_series() -> None:
    contract = load_contract()
    for category, checks in r.PLAYBOOKS.items():
        for check in checks:
            for namespace in (None, "servescope"):
                query = r.render_check(check, "5m", namespace)
                assert not check_expression(query, contract), (category, check.key, query)


def test_a_slow_resize_names_preprocess_its_stage_and_the_step() -> None:
    found = r.latency_culprit(
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
                ({"job": "preprocess", "step": "resize"}, 0.3),
                ({"job": "classifier", "step": "inference"}, 0.1),
            ),
        ),
        "preprocess",
    )
    assert (found.service, found.stage, found.step) == ("preprocess", "preprocess", "resize")
    assert "97% of the end-to-end p95" in found.summary
    assert any("step resize delayed by 300 ms" in e for e in found.evidence)


def test_a_slow_infer_stage_tells_the_model_from_the_network() -> None:
    slow_infer = result("stage_p95", ({"stage": "infer"}, 0.4), ({"stage": "end_to_end"}, 0.41))
    network = r.latency_culprit(
        results(
            slow_infer,
            result("server_p95", ({"job": "classifier"}, 0.01)),
            result("client_p95", ({"peer_service": "classifier"}, 0.4)),
        ),
        "preprocess",
    )
    assert (network.service, network.stage, network.step) == ("classifier", "infer", "network")
    assert "lost between the services" in network.summary
    model = r.latency_culprit(
        results(
            slow_infer,
            result("server_p95", ({"job": "classifier"}, 0.39)),
            result("client_p95", ({"peer_service": "classifier"}, 0.4)),
            result("inference_p95", ({}, 0.35)),
        ),
        "preprocess",
    )
    assert (model.service, model.step) == ("classifier", "inference")


def test_failing_calls_name_the_downstream_and_the_outcome() -> None:
    found = r.errors_culprit(
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


def test_a_down_downstream_is_the_culprit_before_the_edge_that_reports_it() -> None:
    found = r.errors_culprit(
        results(
            result("up", ({"job": "preprocess"}, 1), ({"job": "postprocess"}, 0)),
            result("error_ratio", ({"job": "preprocess"}, 0.3)),
        ),
        "preprocess",
    )
    assert found.service == "postprocess" and "down" in found.summary


def test_drift_names_the_signals_and_puts_the_cause_upstream() -> None:
    found = r.model_culprit(
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
    assert (found.stage, found.step) == ("inputs", "class_psi,mean_intensity_shift")


def test_memory_culprit_tells_rss_from_page_cache() -> None:
    mib = 1024 * 1024
    labels = {"container": "classifier", "pod": "p1"}

    def memory(rss: float, cache: float) -> r.Culprit:
        return r.saturation_culprit(
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


def test_no_traffic_points_upstream_of_the_edge() -> None:
    found = r.availability_culprit(
        results(result("up", ({"job": "preprocess", "instance": "a"}, 1))),
        "preprocess",
        "ServescopeNoTraffic",
    )
    assert (found.service, found.step) == ("preprocess", "ingress")


def test_durations_and_runbook_links() -> None:
    assert r.parse_duration("90s") == 90
    assert r.parse_duration("1h30m") == 5400
    with pytest.raises(ValueError):
        r.parse_duration("5 minutes")
    local = r.runbook_link("runbooks/ServescopeTargetDown.md", None)
    assert (
        local is not None
        and local["exists"]
        and local["url"].endswith("runbooks/ServescopeTargetDown.md")
    )
    hosted = r.runbook_link("runbooks/ServescopeTargetDown.md", "https://docs.invalid/repo/")
    assert hosted is not None and hosted["url"] == (
        "https://docs.invalid/repo/runbooks/ServescopeTargetDown.md"
    )
    assert r.runbook_link("runbooks/Nope.md", None)["exists"] is False  # type: ignore[index]


# --- the process ------------------------------------------------------------------------------


@pytest.fixture
def responder(tmp_path):
    # Prometheus is a port nobody listens on: the note must still be written.
    process = ResponderProcess(free_port(), tmp_path, f"http://127.0.0.1:{free_port()}")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _payload(status: str) -> bytes:
    alert = {
        "status": status,
        "labels": {
            "alertname": "ServescopeTargetDown",
            "severity": "page",
            "category": "availability",
            "service": "classifier",
            "job": "classifier",
        },
        "annotations": {
            "summary": "Prometheus cannot scrape classifier.",
            "description": "100% of the classifier targets have been down.",
            "runbook_url": "runbooks/ServescopeTargetDown.md",
        },
        "startsAt": "2026-05-01T10:00:00.000Z",
        "endsAt": "2026-05-01T10:07:00.000Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": "3f1c0b6a9e2d4c11",
    }
    return json.dumps(
        {
            "version": "4",
            "groupKey": '{}:{alertname="ServescopeTargetDown"}',
            "status": status,
            "receiver": "page",
            "groupLabels": {"alertname": "ServescopeTargetDown"},
            "commonLabels": alert["labels"],
            "commonAnnotations": alert["annotations"],
            "externalURL": "http://127.0.0.1:9093",
            "alerts": [alert],
        }
    ).encode()


def _wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_webhook_becomes_an_incident_note_and_its_resolve_closes_it(responder) -> None:
    status, body = _post(responder.url + "/alerts", _payload("firing"))
    assert (status, body) == (200, {"accepted": 1})
    (note,) = _wait_for(responder.incidents)
    assert note["status"] == "firing" and note["alertname"] == "ServescopeTargetDown"
    assert note["id"] == "20260501T100000Z-ServescopeTargetDown-3f1c0b6a9e2d"
    assert note["runbook"]["exists"] is True
    assert note["runbook"]["url"] == str(RUNBOOKS_DIR / "ServescopeTargetDown.md")
    assert note["culprit"]["service"] == "classifier"
    assert "did not answer" in note["culprit"]["summary"]
    assert all(check["error"] for check in note["diagnostics"])
    markdown = (responder.incidents_path / f"{note['id']}.md").read_text()
    assert markdown.startswith("# FIRING: ServescopeTargetDown (page)")
    assert "runbooks/ServescopeTargetDown.md" in markdown
    assert "```promql" in markdown

    assert _post(responder.url + "/alerts", _payload("resolved"))[0] == 200
    resolved = _wait_for(lambda: [n for n in responder.incidents() if n["status"] == "resolved"])[0]
    assert resolved["resolved_at"] == "2026-05-01T10:07:00Z"
    assert [n["status"] for n in resolved["notifications"]] == ["firing", "resolved"]
    assert [n["receiver"] for n in resolved["notifications"]] == ["page", "page"]
    assert "RESOLVED" in (responder.incidents_path / f"{note['id']}.md").read_text()

    with urllib.request.urlopen(responder.url + "/incidents", timeout=5) as response:
        listed = json.loads(response.read())
    assert [n["id"] for n in listed] == [note["id"]]
    with urllib.request.urlopen(f"{responder.url}/incidents/{note['id']}", timeout=5) as response:
        assert json.loads(response.read())["status"] == "resolved"


def test_the_receiver_refuses_what_is_not_a_webhook(responder) -> None:
    assert _post(responder.url + "/alerts", b"not json")[0] == 400
    assert _post(responder.url + "/alerts", b'{"alerts": "no"}')[0] == 400
    for ident in ("..%2Fetc", "20260501T100000Z-Nothing-0"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{responder.url}/incidents/{ident}", timeout=5)
        assert caught.value.code == 404
    assert responder.incidents() == []


def test_the_responder_listens_on_loopback_only(responder) -> None:
    assert "--host=127.0.0.1" in responder.process.args  # type: ignore[union-attr]
    settings = r.ResponderSettings()
    assert settings.host == "127.0.0.1"
