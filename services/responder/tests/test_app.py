"""The responder's HTTP app: the webhook, the notes, refusals in the shared JSON shape, and
the runtime's health, metrics and errors like every service."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from servescope.responder.app import create_app
from servescope.responder.settings import Settings
from servescope.runtime.health import Health

RUNBOOKS = Path(__file__).resolve().parents[3] / "runbooks"


def _unreachable() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def payload(status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "status": status,
        "receiver": "ticket",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "ServescopeP95LatencyHigh", "category": "latency"},
                "annotations": {"runbook_url": "runbooks/ServescopeP95LatencyHigh.md"},
                "startsAt": "2026-05-01T10:00:00Z",
                "endsAt": "2026-05-01T10:05:00Z",
                "fingerprint": "0123456789abcdef",
            }
        ],
    }


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        incident_dir=tmp_path / "incidents",
        prometheus_url=_unreachable(),
        query_timeout_seconds=2,
        runbook_dir=RUNBOOKS,
        max_request_bytes=4096,
    )
    health = Health("responder", "test")
    with TestClient(create_app(settings, health)) as client:
        assert health.fatal is None
        yield client


def wait_for(client: TestClient, predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate(client.get("/incidents").json())
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {line_start}")


def test_ready_and_live_once_started(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "service": "responder"}
    assert client.get("/readyz").json() == {"status": "ready", "service": "responder"}


def test_a_webhook_becomes_a_note(client: TestClient) -> None:
    response = client.post("/alerts", json=payload())
    assert (response.status_code, response.json()) == (200, {"accepted": 1})
    (summary,) = wait_for(client, lambda notes: notes)
    assert summary["id"] == "20260501T100000Z-ServescopeP95LatencyHigh-0123456789ab"
    assert summary["status"] == "firing"
    note = client.get(f"/incidents/{summary['id']}")
    assert note.headers["content-type"] == "application/json"
    assert note.json()["runbook"]["exists"] is True
    client.post("/alerts", json=payload("resolved"))
    wait_for(client, lambda notes: notes[0]["status"] == "resolved")
    assert metric(client, 'servescope_responder_alerts_received_total{status="firing"}') == 1
    assert metric(client, 'servescope_responder_alerts_received_total{status="resolved"}') == 1
    assert metric(client, 'servescope_responder_notes_written_total{category="latency"}') == 2


def test_an_empty_alert_list_is_accepted_and_does_nothing(client: TestClient) -> None:
    assert client.post("/alerts", json={"alerts": []}).json() == {"accepted": 0}
    assert client.get("/incidents").json() == []


@pytest.mark.parametrize(
    ("body", "kind", "says"),
    [
        (b"not json", "invalid_json", "the body is not JSON"),
        (b"", "invalid_json", "the body is not JSON"),
        (b'{"alerts": "no"}', "invalid_request", "alerts: Input should be a valid list"),
        (b"[1, 2]", "invalid_request", "Alertmanager webhook payload"),
        (
            b'{"alerts": [[null]]}',
            "invalid_request",
            "alerts.0: Input should be a valid dictionary",
        ),
        (b'{"alerts": [{"status": "maybe"}]}', "invalid_request", "alerts.0.status"),
        (b'{"alerts": [{"labels": {"a": 1}}]}', "invalid_request", "alerts.0.labels.a"),
    ],
    ids=[
        "not-json",
        "empty",
        "alerts-not-a-list",
        "not-an-object",
        "alert-not-an-object",
        "unknown-status",
        "label-not-a-string",
    ],
)
def test_what_is_not_a_webhook_is_a_400_that_says_why(
    client: TestClient, body: bytes, kind: str, says: str
) -> None:
    response = client.post("/alerts", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    answer = response.json()
    assert answer["kind"] == kind and answer["stage"] == "webhook"
    assert says in answer["error"]
    assert metric(client, f'servescope_rejected_inputs_total{{reason="{kind}"}}') == 1
    assert client.get("/incidents").json() == []


def test_a_body_over_the_limit_is_a_413(client: TestClient) -> None:
    big = json.dumps({"alerts": [], "padding": "x" * 5000}).encode()
    response = client.post("/alerts", content=big)
    assert response.status_code == 413 and response.json()["kind"] == "body_too_large"
    assert metric(client, 'servescope_rejected_inputs_total{reason="body_too_large"}') == 1


def test_unknown_incidents_are_404_in_the_shared_shape(client: TestClient) -> None:
    for ident in ("20260501T100000Z-Nothing-0", "..%2Fetc", "a.b"):
        response = client.get(f"/incidents/{ident}")
        assert response.status_code == 404, ident
        assert response.json()["kind"] == "not_found"


def test_routes_are_the_contracts(client: TestClient) -> None:
    from fastapi.routing import APIRoute

    from servescope.telemetry.contract import load_contract

    app = client.app
    served = {r.path for r in app.routes if isinstance(r, APIRoute)}  # type: ignore[attr-defined]
    declared = set(load_contract().routes["responder"])
    # The admin routes exist only with an admin token; everything served is declared.
    assert served <= declared
    assert declared - served == {"/admin/faults", "/admin/faults/{step}"}


def test_an_unwritable_incident_directory_is_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    health = Health("responder", "test")
    settings = Settings(incident_dir=blocker / "incidents", prometheus_url=_unreachable())
    with TestClient(create_app(settings, health)) as client:
        assert client.get("/readyz").status_code == 503
    assert health.fatal is not None and "incidents" in health.fatal


def test_with_a_webhook_token_alerts_need_it_and_a_stranger_is_refused_and_counted(
    tmp_path: Path,
) -> None:
    settings = Settings(
        incident_dir=tmp_path / "incidents",
        prometheus_url=_unreachable(),
        query_timeout_seconds=2,
        webhook_token="hook-token",
    )
    with TestClient(create_app(settings, Health("responder", "test"))) as client:
        refused = client.post("/alerts", json=payload(), headers={"authorization": "Bearer no"})
        assert refused.status_code == 401
        assert refused.json()["kind"] == "unauthorized"
        assert client.post("/alerts", json=payload()).status_code == 401
        assert metric(client, 'servescope_rejected_inputs_total{reason="unauthorized"}') == 2
        assert client.get("/incidents").json() == []  # nothing refused was handled
        accepted = client.post(
            "/alerts", json=payload(), headers={"authorization": "Bearer hook-token"}
        )
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["accepted"] == 1


def test_a_webhook_token_from_a_mounted_file_is_required(tmp_path: Path) -> None:
    """The chart's way: the token is a file in the secrets directory, read by the settings."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "SERVESCOPE_RESPONDER_WEBHOOK_TOKEN").write_text("file-token\n")
    settings = Settings(
        _secrets_dir=secrets,
        incident_dir=tmp_path / "incidents",
        prometheus_url=_unreachable(),
        query_timeout_seconds=2,
    )
    with TestClient(create_app(settings, Health("responder", "test"))) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "file-token"}):
            refused = client.post("/alerts", json=payload(), headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json()["kind"] == "unauthorized"
        accepted = client.post(
            "/alerts", json=payload(), headers={"authorization": "Bearer file-token"}
        )
        assert accepted.status_code == 200, accepted.text


def test_a_replayed_webhook_updates_one_note_and_never_races_it(client: TestClient) -> None:
    body = payload()
    body["alerts"] = body["alerts"] * 6  # Alertmanager re-sends; a replay repeats it
    assert client.post("/alerts", json=body).json() == {"accepted": 6}
    (summary,) = wait_for(client, lambda notes: notes)

    def all_six(_: object) -> dict[str, Any] | None:
        note: dict[str, Any] = client.get(f"/incidents/{summary['id']}").json()
        return note if len(note["notifications"]) == 6 else None

    note = wait_for(client, all_six)
    assert [n["status"] for n in note["notifications"]] == ["firing"] * 6


def test_more_alerts_than_it_diagnoses_at_once_is_a_503_alertmanager_retries(
    tmp_path: Path,
) -> None:
    settings = Settings(
        incident_dir=tmp_path / "incidents",
        prometheus_url=_unreachable(),
        query_timeout_seconds=2,
        max_pending_alerts=4,
    )
    with TestClient(create_app(settings, Health("responder", "test"))) as client:
        flood = payload()
        flood["alerts"] = [
            {**flood["alerts"][0], "fingerprint": f"{n:x}".ljust(16, "a")} for n in range(5)
        ]
        refused = client.post("/alerts", json=flood)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["kind"] == "responder_busy"
        assert "at most 4 at once" in refused.json()["error"]
        time.sleep(0.2)
        assert client.get("/incidents").json() == []  # none of the flood was started
        flood["alerts"] = flood["alerts"][:4]
        assert client.post("/alerts", json=flood).json() == {"accepted": 4}
        assert len(wait_for(client, lambda notes: len(notes) == 4 and notes)) == 4
