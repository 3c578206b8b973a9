"""Reference solution: from the edge's failed requests to the deepest span in error, then
that service's own log line for the trace id; answer service, step, kind and trace id."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import TYPE_CHECKING

from servescope.cli.traces import load_spans

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext


def _failed_lines(path, since: int = 0) -> list[dict]:
    found = []
    for line in path.read_text(errors="replace").splitlines()[since:]:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "request_failed" and entry.get("trace_id"):
            found.append(entry)
    return found


def _answer(ctx: CheckContext) -> str | None:
    # 1. A failing request at the edge: every one of them is logged there.
    edge = _failed_lines(ctx.log_dir / "preprocess.log")
    traces = load_spans(ctx.trace_dir)
    settled = time.time() - 2  # every service has written its spans of older requests
    for entry in reversed(edge):
        when = datetime.fromisoformat(entry.get("timestamp", "").replace("Z", "+00:00"))
        if when.timestamp() > settled:
            continue
        trace_id = entry["trace_id"]
        spans = traces.get(trace_id, [])
        in_error = [s for s in spans if s.status == "ERROR"]
        if not in_error:
            continue
        # 2. The deepest span in error: no child of it is in error.
        ids = {s.span_id for s in in_error}
        parents = {s.parent_span_id for s in in_error if s.parent_span_id in ids}
        deepest = [s for s in in_error if s.span_id not in parents]
        origin = max(deepest, key=lambda s: s.start_ns)
        if "CLIENT" in origin.kind.upper():
            continue  # a call in error whose callee's spans are not on disk yet
        # 3. That service's own log line says the kind.
        own = [
            e
            for e in _failed_lines(ctx.log_dir / f"{origin.service}.log")
            if e["trace_id"] == trace_id
        ]
        if own:
            return f"{origin.service} {origin.name} {own[-1]['kind']} {trace_id}"
    return None


def solve(ctx: CheckContext) -> None:
    deadline = time.monotonic() + 20
    while (answer := _answer(ctx)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError("no failing request with a trace and log lines yet")
        time.sleep(0.5)
    ctx.record_answer(answer)
