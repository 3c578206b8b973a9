"""Incident notes: ids, runbook links, markdown, atomic writes, and the Responder's note flow
against a Prometheus that does not answer (the note is written all the same)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from servescope.responder import notes as n
from servescope.responder.settings import Settings
from servescope.telemetry.metrics import ServiceMetrics


def alert(status: str = "firing", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {
            "alertname": "ServescopeTargetDown",
            "severity": "page",
            "category": "availability",
            "service": "classifier",
            "job": "classifier",
            **labels,
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


# --- ids, links, markdown ---------------------------------------------------------------------


def test_incident_ids_come_from_start_name_and_fingerprint() -> None:
    assert n.incident_id(alert()) == "20260501T100000Z-ServescopeTargetDown-3f1c0b6a9e2d"
    unnamed = {"labels": {"alertname": "a b/c"}, "startsAt": "2026-05-01T10:00:00Z"}
    ident = n.incident_id(unnamed)
    assert ident.startswith("20260501T100000Z-a_b_c-")
    assert ident.endswith(n.fingerprint(unnamed)[:12])  # from the labels, without a fingerprint


def test_an_incident_id_never_leaves_the_incident_directory() -> None:
    hostile = {"labels": {"alertname": "../x"}, "fingerprint": "../../../etc/passwd"}
    assert n.INCIDENT_ID.fullmatch(n.incident_id(hostile))


def test_runbook_links() -> None:
    runbooks = Path(__file__).resolve().parents[3] / "runbooks"
    local = n.runbook_link("runbooks/ServescopeTargetDown.md", None, runbooks)
    assert local == {
        "annotation": "runbooks/ServescopeTargetDown.md",
        "url": str(runbooks / "ServescopeTargetDown.md"),
        "exists": True,
    }
    missing = n.runbook_link("runbooks/Nope.md", None, runbooks)
    assert missing is not None and missing["exists"] is False
    hosted = n.runbook_link("runbooks/ServescopeTargetDown.md", "https://docs.invalid/repo/")
    assert hosted == {
        "annotation": "runbooks/ServescopeTargetDown.md",
        "url": "https://docs.invalid/repo/runbooks/ServescopeTargetDown.md",
        "exists": None,  # no runbook directory: not checked
    }
    assert n.runbook_link("runbooks/X.md", None) == {
        "annotation": "runbooks/X.md",
        "url": "runbooks/X.md",
        "exists": None,
    }
    absolute = n.runbook_link("https://wiki.invalid/X", None, runbooks)
    assert absolute == {
        "annotation": "https://wiki.invalid/X",
        "url": "https://wiki.invalid/X",
        "exists": None,
    }
    escape = n.runbook_link("runbooks/../../etc/passwd", None, runbooks)
    assert escape is not None and escape["url"] == str(runbooks / "passwd")
    assert n.runbook_link(None, None) is None


def note(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "i",
        "alertname": "ServescopeP95LatencyHigh",
        "status": "firing",
        "labels": {"severity": "page", "service": "preprocess"},
        "annotations": {"summary": "p95 above 200 ms", "description": "slow"},
        "starts_at": "2026-05-01T10:00:00Z",
        "resolved_at": None,
        "runbook": {"annotation": "runbooks/A.md", "url": "runbooks/A.md", "exists": False},
        "culprit": {
            "service": "preprocess",
            "stage": "preprocess",
            "step": "resize",
            "summary": "slow resize",
            "evidence": ["stage preprocess p95 310 ms"],
        },
        "exemplar_query": 'servescope_stage_duration_seconds_bucket{stage="preprocess"}',
        "traces": [
            {
                "trace_id": "ab" * 16,
                "value": 0.31,
                "at": "2026-05-01T10:00:05Z",
                "url": "http://j/ab",
            }
        ],
        "traces_error": None,
        "diagnosed_at": "2026-05-01T10:00:10Z",
        "diagnostics": [
            {"title": "p95", "query": "up", "samples": [{"labels": {"job": "x"}, "value": 1.5}]},
            {"title": "empty", "query": "up", "samples": [], "error": None},
            {"title": "broken", "query": "up", "samples": [], "error": "QueryError: down"},
        ],
        "notifications": [{"status": "firing", "received_at": "2026-05-01T10:00:09Z"}],
    }
    return {**base, **changes}


def test_markdown_names_the_culprit_links_runbook_and_traces() -> None:
    text = n.render_markdown(note())
    assert text.startswith("# FIRING: ServescopeP95LatencyHigh (page)\n")
    assert "**preprocess**, stage `preprocess`, step `resize`: slow resize" in text
    assert "| runbook | [runbooks/A.md](runbooks/A.md) (missing!) |" in text
    assert f"| [`{'ab' * 16}`](http://j/ab) | 0.31 | 2026-05-01T10:00:05Z |" in text
    assert "| job=x | 1.5 |" in text and "No data." in text and "Query failed: QueryError" in text
    assert "- firing at 2026-05-01T10:00:09Z via ?" in text
    resolved = n.render_markdown(note(status="resolved", resolved_at="2026-05-01T10:07:00Z"))
    assert resolved.startswith("# RESOLVED:") and "resolved at 2026-05-01T10:07:00Z" in resolved
    bare = n.render_markdown(note(runbook=None, traces=[], traces_error="exemplar query failed"))
    assert "this alert has no runbook_url" in bare and "exemplar query failed" in bare


def test_writes_are_atomic(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    n.write_atomic(path, b"one")
    n.write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.json"]


# --- the Responder ----------------------------------------------------------------------------


def _unreachable() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def run(
    settings: Settings, payloads: list[dict[str, Any]], metrics: ServiceMetrics | None = None
) -> n.Responder:
    async def go() -> n.Responder:
        async with aiohttp.ClientSession() as session:
            responder = n.Responder(settings, session, metrics)
            for payload in payloads:
                responder.submit(payload)
                await responder.drain()
            return responder

    return asyncio.run(go())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        incident_dir=tmp_path / "incidents",
        prometheus_url=_unreachable(),
        query_timeout_seconds=2,
        runbook_dir=Path(__file__).resolve().parents[3] / "runbooks",
    )


def test_a_firing_alert_becomes_a_note_and_its_resolve_closes_it(settings: Settings) -> None:
    metrics = ServiceMetrics("responder")
    responder = run(
        settings,
        [
            {"receiver": "page", "alerts": [alert()]},
            {"receiver": "page", "alerts": [alert("resolved"), "not an alert"]},
        ],
        metrics,
    )
    (summary,) = responder.incidents()
    assert summary["status"] == "resolved" and summary["notifications"] == 2
    raw = responder.note(summary["id"])
    assert raw is not None
    full = orjson.loads(raw)
    assert full["id"] == "20260501T100000Z-ServescopeTargetDown-3f1c0b6a9e2d"
    assert full["resolved_at"] == "2026-05-01T10:07:00Z"
    assert [x["status"] for x in full["notifications"]] == ["firing", "resolved"]
    assert full["runbook"]["exists"] is True
    assert full["culprit"]["service"] == "classifier"
    assert "did not answer" in full["culprit"]["summary"]
    assert all(check["error"] for check in full["diagnostics"])
    assert full["traces"] == [] and "exemplar query failed" in full["traces_error"]
    markdown = (settings.incident_dir / f"{full['id']}.md").read_text()
    assert markdown.startswith("# RESOLVED: ServescopeTargetDown (page)")
    # The same JSON format as before the split: these keys, in this order.
    assert list(full) == [
        "id", "alertname", "status", "labels", "annotations", "starts_at", "resolved_at",
        "fingerprint", "generator_url", "runbook", "culprit", "exemplar_query", "traces",
        "traces_error", "diagnosed_at", "window", "prometheus_url", "diagnostics",
        "notifications",
    ]  # fmt: skip

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert value("servescope_responder_alerts_received_total", status="firing") == 1
    assert value("servescope_responder_alerts_received_total", status="resolved") == 1
    assert value("servescope_responder_notes_written_total", category="availability") == 2
    assert value("servescope_responder_notes_written_total", category="other") == 0
    assert value("servescope_responder_diagnosis_duration_seconds_count") == 1
    queries = len(full["diagnostics"])
    assert (
        value("servescope_responder_prometheus_query_failures_total", prometheus_api="query")
        == queries
    )
    assert (
        value(
            "servescope_responder_prometheus_query_failures_total", prometheus_api="query_exemplars"
        )
        == 1
    )


def test_an_unknown_category_is_counted_as_other_and_gets_the_generic_checks(
    settings: Settings,
) -> None:
    metrics = ServiceMetrics("responder")
    responder = run(settings, [{"alerts": [alert(category="surprise")]}], metrics)
    (summary,) = responder.incidents()
    full = orjson.loads(responder.note(summary["id"]) or b"{}")
    assert [c["key"] for c in full["diagnostics"]] == ["up", "error_ratio", "stage_p95"]
    assert (
        metrics.registry.get_sample_value(
            "servescope_responder_notes_written_total", {"category": "other"}
        )
        == 1
    )


def test_no_trace_lookup_when_max_traces_is_zero(settings: Settings) -> None:
    responder = run(settings.model_copy(update={"max_traces": 0}), [{"alerts": [alert()]}])
    (summary,) = responder.incidents()
    full = orjson.loads(responder.note(summary["id"]) or b"{}")
    assert full["traces"] == [] and full["traces_error"] is None


def test_notes_are_read_only_by_a_well_formed_id(settings: Settings) -> None:
    responder = run(settings, [])
    (settings.incident_dir / "broken.json").write_text("{not json")
    assert responder.incidents() == []
    assert responder.note("broken") == b"{not json"
    assert responder.note("../incidents/broken") is None
    assert responder.note("20260501T100000Z-Nothing-0") is None
