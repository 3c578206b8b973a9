"""Incident notes: their ids, their markdown, atomic writes, and the Responder that makes them.

One note per alert (Alertmanager's fingerprint and start time make its id), as JSON and
markdown side by side in the incident directory. The first firing notification diagnoses the
alert (its playbook's queries, the culprit, trace ids from exemplars); later notifications,
the resolve among them, are appended to the same note.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
import orjson
import structlog
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from servescope.responder.culprits import exemplar_query, find_culprit
from servescope.responder.playbooks import (
    CheckResult,
    category_of,
    parse_duration,
    playbook,
    render_check,
)
from servescope.responder.prometheus import Prometheus
from servescope.responder.settings import Settings
from servescope.telemetry.metrics import ServiceMetrics, observe
from servescope.telemetry.tracing import tracer

log = structlog.get_logger()

# Incident ids, and so note file names: nothing that could leave the incident directory.
INCIDENT_ID = re.compile(r"[A-Za-z0-9_-]+")


def _timestamp(text: str | None) -> float | None:
    if not text or text.startswith("0001-"):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def fingerprint(alert: Mapping[str, Any]) -> str:
    given = alert.get("fingerprint")
    if isinstance(given, str) and given:
        return given
    labels = sorted((alert.get("labels") or {}).items())
    return hashlib.sha256(orjson.dumps(labels)).hexdigest()[:16]


def incident_id(alert: Mapping[str, Any]) -> str:
    """`<start, UTC>-<alertname>-<fingerprint>`, made only of [A-Za-z0-9_-]."""
    started = _timestamp(alert.get("startsAt")) or time.time()
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%SZ")
    name = str((alert.get("labels") or {}).get("alertname", "alert"))
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{stamp}-{name}-{fingerprint(alert)[:12]}")


def runbook_link(
    annotation: str | None, base_url: str | None, runbook_dir: Path | None = None
) -> dict[str, Any] | None:
    """The alert's runbook: its link, and whether the page exists (null: not checked).

    A relative annotation (`runbooks/<Alert>.md`) is resolved against `base_url` when set;
    the page is looked up by its file name in `runbook_dir` when that is set.
    """
    if not annotation:
        return None
    if re.match(r"^[a-z][a-z0-9+.-]*://", annotation):
        return {"annotation": annotation, "url": annotation, "exists": None}
    relative = annotation.lstrip("/")
    page = PurePosixPath(re.split(r"[#?]", relative, maxsplit=1)[0]).name
    path = runbook_dir / page if runbook_dir is not None and page else None
    if base_url:
        url = base_url.rstrip("/") + "/" + relative
    elif path is not None:
        url = str(path)
    else:
        url = relative
    return {"annotation": annotation, "url": url, "exists": path.is_file() if path else None}


def render_markdown(note: Mapping[str, Any]) -> str:
    labels: Mapping[str, str] = note["labels"]
    annotations: Mapping[str, str] = note["annotations"]
    culprit: Mapping[str, Any] = note["culprit"]
    lines = [
        f"# {note['status'].upper()}: {note['alertname']} ({labels.get('severity', 'no severity')})",
        "",
        "| | |",
        "|---|---|",
        f"| status | {note['status']} since {note['starts_at']}"
        + (f", resolved at {note['resolved_at']}" if note.get("resolved_at") else "")
        + " |",
        f"| service | {labels.get('service', labels.get('job', '?'))} |",
    ]
    if annotations.get("summary"):
        lines.append(f"| summary | {annotations['summary']} |")
    runbook = note.get("runbook")
    if runbook:
        missing = " (missing!)" if runbook.get("exists") is False else ""
        lines.append(f"| runbook | [{runbook['annotation']}]({runbook['url']}){missing} |")
    else:
        lines.append("| runbook | none: this alert has no runbook_url |")
    lines += ["", f"> {annotations.get('description', '(no description)')}", ""]
    lines += ["## Likely culprit", ""]
    where = [f"**{culprit.get('service') or 'unknown'}**"]
    if culprit.get("stage"):
        where.append(f"stage `{culprit['stage']}`")
    if culprit.get("step"):
        where.append(f"step `{culprit['step']}`")
    lines.append(", ".join(where) + f": {culprit.get('summary', '')}")
    if culprit.get("evidence"):
        lines += ["", *[f"- {e}" for e in culprit["evidence"]]]
    lines += ["", "## Traces", ""]
    traces = note.get("traces") or []
    if traces:
        lines += [
            f"Slowest requests recorded as exemplars of `{note.get('exemplar_query')}`:",
            "",
            "| trace id | value | at |",
            "|---|---|---|",
        ]
        for trace in traces:
            ident = f"`{trace['trace_id']}`"
            if trace.get("url"):
                ident = f"[{ident}]({trace['url']})"
            lines.append(f"| {ident} | {trace['value']:g} | {trace['at']} |")
    else:
        lines.append(note.get("traces_error") or "No exemplar with a trace id in the window.")
    lines += ["", "## Diagnostics", "", f"Evaluated at {note['diagnosed_at']}.", ""]
    for check in note["diagnostics"]:
        lines += [f"### {check['title']}", "", "```promql", check["query"], "```", ""]
        if check.get("error"):
            lines += [f"Query failed: {check['error']}", ""]
        elif not check["samples"]:
            lines += ["No data.", ""]
        else:
            lines += ["| series | value |", "|---|---|"]
            for sample in check["samples"][:20]:
                series = ", ".join(f"{k}={v}" for k, v in sorted(sample["labels"].items()))
                lines.append(f"| {series or '{}'} | {sample['value']:.6g} |")
            lines.append("")
    lines += ["## Notifications", ""]
    lines += [
        f"- {n['status']} at {n['received_at']} via {n.get('receiver') or '?'}"
        for n in note["notifications"]
    ]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class _IncidentLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Busy(Exception):
    """More alerts at once than the responder diagnoses concurrently (max_pending_alerts)."""


@dataclass
class Responder:
    """Diagnoses each alert it is handed and writes its note; one note at a time per incident."""

    settings: Settings
    session: aiohttp.ClientSession
    metrics: ServiceMetrics | None = None
    _locks: dict[str, _IncidentLock] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        m = self.metrics
        self._received = _counter(m, "servescope_responder_alerts_received_total", "status")
        self._written = _counter(m, "servescope_responder_notes_written_total", "category")
        self._duration = (
            m.histogram("servescope_responder_diagnosis_duration_seconds") if m else None
        )
        self.prometheus = Prometheus(
            self.session,
            self.settings.prometheus_url,
            self.settings.query_timeout_seconds,
            _counter(m, "servescope_responder_prometheus_query_failures_total", "prometheus_api"),
        )
        self.window_seconds = parse_duration(self.settings.window)
        self.settings.incident_dir.mkdir(parents=True, exist_ok=True)

    def note_path(self, ident: str, suffix: str) -> Path:
        return self.settings.incident_dir / f"{ident}.{suffix}"

    def submit(self, payload: Mapping[str, Any]) -> int:
        """Start handling every alert of a webhook payload; returns how many were accepted.

        Each alert is handled in its own task, which inherits the request's trace context,
        so the diagnosis joins the webhook's trace.
        """
        receiver = str(payload.get("receiver") or "")
        alerts = [a for a in payload.get("alerts") or [] if isinstance(a, dict)]
        room = self.settings.max_pending_alerts - len(self._tasks)
        if len(alerts) > room:
            # Alertmanager retries a 503 later, so nothing is lost, and a flood (or a
            # stranger's) cannot start unbounded work against Prometheus.
            raise Busy(
                f"{len(self._tasks)} alerts are being diagnosed and this payload has "
                f"{len(alerts)}; at most {self.settings.max_pending_alerts} at once"
            )
        for alert in alerts:
            if self._received is not None:
                self._received.labels(_status(alert)).inc()
            task = asyncio.create_task(self.handle(alert, receiver))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(alerts)

    async def drain(self) -> None:
        """Wait for the notes under way (each query is bounded by the query timeout)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def handle(self, alert: Mapping[str, Any], receiver: str) -> None:
        ident = incident_id(alert)
        held = self._locks.setdefault(ident, _IncidentLock())
        held.users += 1
        try:
            async with held.lock:
                await self._handle(alert, receiver, ident)
        except Exception as exc:
            log.exception(
                "incident_note_failed",
                incident=ident,
                alertname=str((alert.get("labels") or {}).get("alertname", "")),
                error_type=type(exc).__name__,
            )
        finally:
            # A lock lives while a note of its incident is under way or waited for: the map
            # stays as small as the pending work, whatever ids arrive.
            held.users -= 1
            if held.users == 0:
                del self._locks[ident]

    async def _handle(self, alert: Mapping[str, Any], receiver: str, ident: str) -> None:
        status = _status(alert)
        notification = {"status": status, "received_at": _iso(time.time()), "receiver": receiver}
        json_path = self.note_path(ident, "json")
        note: dict[str, Any]
        if json_path.exists():
            note = orjson.loads(json_path.read_bytes())
            note["notifications"].append(notification)
        else:
            note = await self.diagnose(alert, ident)
            note["notifications"] = [notification]
        note["status"] = status
        if status == "resolved":
            note["resolved_at"] = _iso(_timestamp(alert.get("endsAt")) or time.time())
        else:
            note["resolved_at"] = None
        # Markdown first: whoever polls the JSON finds the markdown already up to date.
        write_atomic(self.note_path(ident, "md"), render_markdown(note).encode())
        write_atomic(json_path, orjson.dumps(note, option=orjson.OPT_INDENT_2) + b"\n")
        category = category_of(note["labels"].get("category"))
        if self._written is not None:
            self._written.labels(category).inc()
        culprit = note["culprit"]
        log.info(
            "incident_note_written",
            incident=ident,
            alertname=note["alertname"],
            alert_status=status,
            category=category,
            culprit_service=culprit["service"],
            culprit_stage=culprit["stage"],
            culprit_step=culprit["step"],
            note_path=str(json_path),
        )

    async def diagnose(self, alert: Mapping[str, Any], ident: str) -> dict[str, Any]:
        """The note's body: the playbook's results, the culprit, the traces. A `diagnose` span."""
        labels: dict[str, str] = dict(alert.get("labels") or {})
        started = time.perf_counter()
        with tracer().start_as_current_span("diagnose", kind=SpanKind.INTERNAL) as span:
            span.set_attribute("servescope.incident.id", ident)
            span.set_attribute("servescope.alert.name", labels.get("alertname", ""))
            span.set_attribute("servescope.alert.category", category_of(labels.get("category")))
            note = await self._diagnose(alert, ident)
            culprit = note["culprit"]
            for key in ("service", "stage", "step"):
                if culprit.get(key):
                    span.set_attribute(f"servescope.culprit.{key}", str(culprit[key]))
            failed = sum(1 for check in note["diagnostics"] if check["error"])
            span.set_attribute("servescope.diagnosis.failed_queries", failed)
            span.set_attribute("servescope.diagnosis.traces", len(note["traces"]))
            if self._duration is not None:
                observe(self._duration, time.perf_counter() - started)
        return note

    async def _diagnose(self, alert: Mapping[str, Any], ident: str) -> dict[str, Any]:
        labels: dict[str, str] = dict(alert.get("labels") or {})
        annotations: dict[str, str] = dict(alert.get("annotations") or {})
        now = time.time()
        checks = playbook(labels.get("category"))
        queries = [render_check(c, self.settings.window, labels.get("namespace")) for c in checks]
        outcomes = await asyncio.gather(
            *(self.prometheus.query(q, now) for q in queries), return_exceptions=True
        )
        results: dict[str, CheckResult] = {}
        for check, query, outcome in zip(checks, queries, outcomes, strict=True):
            result = CheckResult(check.key, check.title, query)
            if isinstance(outcome, BaseException):
                result.error = f"{type(outcome).__name__}: {outcome}"
            else:
                result.samples = outcome
            results[check.key] = result
        culprit = find_culprit(alert, results)
        if results and all(r.error for r in results.values()):
            first = next(iter(results.values())).error
            culprit.summary = (
                f"Prometheus at {self.settings.prometheus_url} did not answer ({first}); "
                "run the runbook's queries by hand"
            )
            log.warning(
                "prometheus_unreachable",
                incident=ident,
                prometheus_url=self.settings.prometheus_url,
                failed_queries=len(results),
                error=first,
            )
        exemplars_query = exemplar_query(alert, culprit)
        traces, traces_error = await self.traces(alert, exemplars_query, now)
        return {
            "id": ident,
            "alertname": labels.get("alertname", ""),
            "status": "firing",
            "labels": labels,
            "annotations": annotations,
            "starts_at": alert.get("startsAt"),
            "resolved_at": None,
            "fingerprint": fingerprint(alert),
            "generator_url": alert.get("generatorURL"),
            "runbook": runbook_link(
                annotations.get("runbook_url"),
                self.settings.runbook_base_url,
                self.settings.runbook_dir,
            ),
            "culprit": asdict(culprit),
            "exemplar_query": exemplars_query,
            "traces": traces,
            "traces_error": traces_error,
            "diagnosed_at": _iso(now),
            "window": self.settings.window,
            "prometheus_url": self.settings.prometheus_url,
            "diagnostics": [asdict(r) for r in results.values()],
        }

    async def traces(
        self, alert: Mapping[str, Any], promql: str, now: float
    ) -> tuple[list[dict[str, Any]], str | None]:
        if not self.settings.max_traces:
            return [], None
        started = _timestamp(alert.get("startsAt")) or now
        start = min(started, now) - self.window_seconds
        try:
            exemplars = await self.prometheus.exemplars(promql, start, now)
        except Exception as exc:  # a note without traces is still a note
            return [], f"exemplar query failed: {type(exc).__name__}: {exc}"
        traces: list[dict[str, Any]] = []
        seen: set[str] = set()
        for exemplar in sorted(exemplars, key=lambda e: -e["value"]):
            trace_id = exemplar["labels"].get("trace_id")
            if not trace_id or trace_id in seen:
                continue
            seen.add(trace_id)
            template = self.settings.trace_url_template
            traces.append(
                {
                    "trace_id": trace_id,
                    "span_id": exemplar["labels"].get("span_id"),
                    "value": exemplar["value"],
                    "at": _iso(exemplar["timestamp"]),
                    "series": exemplar["series"],
                    "url": template.format(trace_id=trace_id) if template else None,
                }
            )
            if len(traces) >= self.settings.max_traces:
                break
        return traces, None

    def incidents(self) -> list[dict[str, Any]]:
        """A summary of every note, oldest first."""
        notes = []
        for path in sorted(self.settings.incident_dir.glob("*.json")):
            with contextlib.suppress(OSError, orjson.JSONDecodeError, KeyError, TypeError):
                note = orjson.loads(path.read_bytes())
                notes.append(
                    {
                        "id": note["id"],
                        "alertname": note["alertname"],
                        "status": note["status"],
                        "starts_at": note["starts_at"],
                        "resolved_at": note.get("resolved_at"),
                        "culprit": note["culprit"],
                        "notifications": len(note["notifications"]),
                    }
                )
        return notes

    def note(self, ident: str) -> bytes | None:
        """One note's JSON as written, or None when there is no such incident."""
        if not INCIDENT_ID.fullmatch(ident):
            return None
        try:
            return self.note_path(ident, "json").read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None


def _counter(metrics: ServiceMetrics | None, name: str, label: str) -> Counter | None:
    """A counter with every value of its one label present from the start (rate() sees 0)."""
    if metrics is None:
        return None
    counter = metrics.counter(name)
    for value in metrics.contract.label_rules[label].values:
        counter.labels(value)
    return counter


def _status(alert: Mapping[str, Any]) -> str:
    return "resolved" if alert.get("status") == "resolved" else "firing"
