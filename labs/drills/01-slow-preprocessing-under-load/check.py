"""Checker for drills/01-slow-preprocessing-under-load, the guide's four steps graded:

1. the answer names the service and the step `lab start` slowed (kept in ctx.state);
2. it gives the trace id of one slow request: a trace in the trace files whose span of that
   step took most of the 500 ms (found by trace);
3. that trace id is in the service's log lines (the logs correlated by trace id);
4. the fix is applied and validated: the service reports no delay on the step, and the
   edge's p95 for predictions, from the lab's Prometheus over the last 15 s, is back under
   250 ms with traffic flowing.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from servescope.cli.traces import load_spans

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

LAB = "drills/01-slow-preprocessing-under-load"
SERVICES = ("preprocess", "classifier", "postprocess")
SLOW_SPAN_MS = 400.0  # the step's span of a slowed request (500 ms of delay)
P95_TARGET_SECONDS = 0.25
WINDOW = "15s"
P95 = (
    "histogram_quantile(0.95, sum by (le) (rate(http_server_request_duration_seconds_bucket"
    f'{{job="preprocess", http_route="/v1/predict"}}[{WINDOW}])))'
)
RATE = (
    'sum(rate(http_server_request_duration_seconds_count{job="preprocess", '
    f'http_route="/v1/predict"}}[{WINDOW}]))'
)
TRACE_ID = re.compile(r"\b[0-9a-f]{32}\b")


def _same_step(answered: str, actual: str) -> bool:
    return answered == actual or answered.startswith(actual) or actual.startswith(answered)


def _grade_answer(ctx: CheckContext, fault: dict) -> None:
    answer = (ctx.answer or "").strip().lower()
    if not ctx.require(
        answer,
        "you answered the slow service, step and a slow request's trace id",
        f"servescope lab answer {LAB} SERVICE STEP TRACE_ID   (`servescope trace --slowest 3`)",
    ):
        return
    trace_ids = TRACE_ID.findall(answer)
    words = [w for w in re.split(r"[\s:/,]+", TRACE_ID.sub(" ", answer)) if w]
    service = next((w for w in words if w in SERVICES), None)
    rest = [w for w in words if w != service]
    step = rest[-1] if rest else ""
    right_service = service == fault["service"]
    ctx.require(
        right_service,
        "the slow service is right",
        "the edge's own span is always the longest (it waits for everything): read each span's "
        "own time, the waterfall's last line"
        if service
        else f"name one of {', '.join(SERVICES)}, a step and a trace id",
    )
    ctx.require(
        right_service and _same_step(step, fault["step"]),
        "the slow step is right",
        "which span of that service has the most time of its own? Its name is the step",
    )
    if not ctx.require(
        trace_ids,
        "the answer carries a trace id (32 hex digits)",
        "copy the trace id of one slow request from `servescope trace --slowest 3`",
    ):
        return
    traces = load_spans(ctx.trace_dir)
    spans = traces.get(trace_ids[0], [])
    slow = [
        s
        for s in spans
        if s.service == fault["service"]
        and _same_step(s.name, fault["step"])
        and s.duration_ms >= SLOW_SPAN_MS
    ]
    ctx.require(
        slow,
        "that trace is a slow request, slowed in the step you named",
        f"trace {trace_ids[0]} is not in {ctx.trace_dir}"
        if not spans
        else f"trace {trace_ids[0]} has no {fault['step']} span over {SLOW_SPAN_MS:.0f} ms: "
        "pick one of the slowest traces, from before the fix",
    )
    log = ctx.log_dir / f"{fault['service']}.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    ctx.require(
        trace_ids[0] in text,
        "the trace's log lines are there (logs correlated by trace id)",
        f"`grep {trace_ids[0]} {log}`: every line a service writes inside a request carries "
        "its trace_id; pick a trace whose lines you read",
    )


def _grade_fix(ctx: CheckContext, fault: dict) -> None:
    status, body = ctx.admin(fault["service"], "GET", "/admin/faults")
    delays = body.get("delays", {}) if status == 200 and isinstance(body, dict) else {}
    fixed = not delays.get(fault["step"])
    ctx.require(
        fixed,
        "the fix is applied: no delay left in the step",
        "switch it off: uv run servescope fault SERVICE delay STEP 0 (what a rollback or a config "
        "fix does in production)",
    )
    rate = ctx.query(RATE)
    flowing = bool(rate) and rate[0].value > 0
    ctx.require(flowing, "predictions are flowing", "the lab's traffic stopped: lab restart")
    p95 = ctx.query(P95)
    value = p95[0].value if p95 else float("nan")
    ctx.require(
        fixed and flowing and value < P95_TARGET_SECONDS,
        f"the fix is validated: the edge's p95 over the last {WINDOW} is under "
        f"{P95_TARGET_SECONDS * 1000:.0f} ms",
        f"p95 is {value * 1000:.0f} ms in Prometheus ({P95}); "
        + (
            "wait 15 s of clean traffic after the fix and check again"
            if fixed
            else "the step is still slow"
        ),
    )


def check(ctx: CheckContext) -> None:
    fault = ctx.state.get("fault")
    if not ctx.require(
        fault, "the drill slowed a step when it started", f"servescope lab start {LAB}"
    ):
        return
    _grade_answer(ctx, fault)
    _grade_fix(ctx, fault)
