"""The responder against the rest of the repository, and as a process.

Its pure logic (culprits, playbooks, notes, the app's routes) is tested beside it in
services/responder/tests. Here: every diagnostic query reads series the telemetry contract
declares, every alert category of the rules has a playbook, and the service started the way
local mode starts it (`python -m servescope.responder`, settings in its environment) takes
Alertmanager's webhook payload, writes its note, and emits only the spans and log fields the
contract declares. The end-to-end test (test_end_to_end.py) runs it against a real
Prometheus and Alertmanager.
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
from servescope.responder import playbooks
from servescope.telemetry.contract import load_contract

from .conftest import RUNBOOKS_DIR, alerts


def test_every_diagnostic_query_reads_declared_series() -> None:
    contract = load_contract()
    for category, checks in playbooks.PLAYBOOKS.items():
        for check in checks:
            for namespace in (None, "servescope"):
                query = playbooks.render_check(check, "5m", namespace)
                assert not check_expression(query, contract), (category, check.key, query)


def test_every_alert_category_has_a_playbook_and_a_metric_label() -> None:
    categories = {rule["labels"]["category"] for _, rule in alerts()}
    assert categories <= set(playbooks.PLAYBOOKS)
    assert categories <= set(playbooks.CATEGORIES)
    declared = load_contract().label_rules["category"].values
    assert set(declared) == {*playbooks.CATEGORIES, "other"}


# --- the process ------------------------------------------------------------------------------


@pytest.fixture
def responder(tmp_path):
    # Prometheus is a port nobody listens on: the note must still be written.
    process = ResponderProcess(
        free_port(),
        tmp_path,
        f"http://127.0.0.1:{free_port()}",
        extra_env={
            "SERVESCOPE_TRACE_FILE": str(tmp_path / "traces.jsonl"),
            "SERVESCOPE_RESPONDER_QUERY_TIMEOUT_SECONDS": "2",
        },
    )
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
    status, body = _post(responder.url + "/alerts", b"not json")
    assert status == 400 and body["kind"] == "invalid_json" and "not JSON" in body["error"]
    status, body = _post(responder.url + "/alerts", b'{"alerts": "no"}')
    assert status == 400 and body["kind"] == "invalid_request"
    for ident in ("..%2Fetc", "20260501T100000Z-Nothing-0"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{responder.url}/incidents/{ident}", timeout=5)
        assert caught.value.code == 404
    assert responder.incidents() == []
    with urllib.request.urlopen(responder.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'servescope_rejected_inputs_total{reason="invalid_json"} 1.0' in text
    assert 'servescope_rejected_inputs_total{reason="invalid_request"} 1.0' in text


def test_the_responder_listens_on_loopback_only(responder) -> None:
    assert responder.env["SERVESCOPE_HOST"] == "127.0.0.1"
    assert responder.process.args[-2:] == ["-m", "servescope.responder"]


def test_its_spans_and_log_fields_are_the_contracts(responder, tmp_path) -> None:
    assert _post(responder.url + "/alerts", _payload("firing"))[0] == 200
    _wait_for(responder.incidents)
    assert responder.stop() == 0  # flushes the spans still queued
    contract = load_contract()
    spans = [json.loads(line) for line in (tmp_path / "traces.jsonl").read_text().splitlines()]
    assert {s["service"] for s in spans} == {"responder"}
    (server,) = [s for s in spans if s["kind"] == "SERVER"]
    assert server["name"] == "POST /alerts"
    (diagnose,) = [s for s in spans if s["name"] == "diagnose"]
    assert diagnose["trace_id"] == server["trace_id"]
    assert diagnose["parent_span_id"] == server["span_id"]
    assert diagnose["attributes"]["servescope.culprit.service"] == "classifier"
    queries = [s for s in spans if s["kind"] == "CLIENT"]
    assert queries and all(q["parent_span_id"] == diagnose["span_id"] for q in queries)
    assert all(q["attributes"]["peer.service"] == "prometheus" for q in queries)
    assert all(q["status"] == "ERROR" for q in queries)  # nobody listens there
    declared = {}
    for spec in contract.spans:
        if "responder" in spec.services:
            declared[spec.kind, spec.name] = set(spec.attributes)
    for span in spans:
        key = (span["kind"], "diagnose" if span["kind"] == "INTERNAL" else None)
        allowed = next(
            attrs
            for (kind, name), attrs in declared.items()
            if kind == key[0] and (key[1] is None or name == key[1])
        )
        assert set(span["attributes"]) <= allowed, (span["name"], set(span["attributes"]) - allowed)
    # Log lines: JSON, every field declared, the note's line in the webhook's trace.
    fields = set(contract.log_fields or {})
    lines = [json.loads(line) for line in responder.log_path.read_text().splitlines()]
    for line in lines:
        assert set(line) <= fields, set(line) - fields
    (written,) = [line for line in lines if line["event"] == "incident_note_written"]
    assert written["trace_id"] == server["trace_id"]
    assert written["culprit_service"] == "classifier" and written["category"] == "availability"
