"""Reference solution: the four steps a responder takes.

Confirm with metrics (the edge's p95 in Prometheus is over the target), find the step by
trace (the span with the most own time in the slowest traces), correlate the logs (a slow
trace whose id is in the service's log), answer, then apply the fix (the fault off, as
`servescope fault preprocess delay STEP 0` does) and validate it (p95 back under the target).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from servescope.cli.traces import build_tree, load_spans, slowest_traces

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

P95 = (
    "histogram_quantile(0.95, sum by (le) (rate(http_server_request_duration_seconds_bucket"
    '{job="preprocess", http_route="/v1/predict"}[15s])))'
)


def _p95(ctx: CheckContext) -> float:
    samples = ctx.query(P95)
    return samples[0].value if samples else float("nan")


def _culprit(ctx: CheckContext) -> tuple[str, str, str] | None:
    traces = {
        trace_id: spans
        for trace_id, spans in load_spans(ctx.trace_dir).items()
        if len({span.service for span in spans}) >= 3
    }
    votes: Counter[tuple[str, str]] = Counter()
    example: dict[tuple[str, str], str] = {}
    logs = {}
    for trace_id in slowest_traces(traces, 5):
        spans = traces[trace_id]
        build_tree(spans)
        slowest = max(spans, key=lambda s: s.self_ms)
        key = (slowest.service, slowest.name)
        votes[key] += 1
        if key not in example:
            log = ctx.log_dir / f"{slowest.service}.log"
            logs.setdefault(key, log.read_text(errors="replace") if log.is_file() else "")
            if trace_id in logs[key]:
                example[key] = trace_id
    if sum(votes.values()) < 5:
        return None
    (service, step), _ = votes.most_common(1)[0]
    trace_id = example.get((service, step))
    return (service, step, trace_id) if trace_id else None


def solve(ctx: CheckContext) -> None:
    # 1. Confirm with metrics: the edge is slow.
    ctx.wait_for(lambda: _p95(ctx) > 0.4, timeout=30, interval=1)
    # 2 and 3. Find the step by trace, with a trace whose log lines are there.
    found = ctx.wait_for(lambda: _culprit(ctx), timeout=30, interval=0.5)
    if not found:
        raise RuntimeError(f"no slow traces with log lines in {ctx.trace_dir}")
    service, step, trace_id = found
    ctx.record_answer(f"{service} {step} {trace_id}")
    # 4. The fix, then its validation: p95 back under the target on fresh traffic.
    status, body = ctx.admin(service, "PUT", f"/admin/faults/{step}", {"delay_seconds": 0})
    if status != 200:
        raise RuntimeError(f"could not clear the fault: {body}")
    time.sleep(1)
    if not ctx.wait_for(lambda: _p95(ctx) < 0.25, timeout=60, interval=1):
        raise RuntimeError(f"p95 did not recover: {_p95(ctx)}")
