"""Checker for intermediate/04-error-spike-to-trace-and-logs.

`lab start` switched the runtime's `error` fault on in one step of one service (setup.py,
kept in ctx.state). The learner answers `SERVICE STEP KIND TRACE_ID`, and this checker
grades each part against that choice and against the run's own evidence:

1. the edge really is failing requests (its 5xx ratio in the lab's Prometheus is above 0);
2. the service and the step are where the failure starts, not where it was passed on;
3. the kind is the failing service's own error kind, not the edge's wrapper for it;
4. the trace id is a request that failed in that step: in the trace files, that service's
   span of that step ended in ERROR;
5. the trace id is in the log of every service the request went through, and the failing
   service's line for it is `request_failed` with that kind (the logs joined by trace id).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from servescope.cli.labs import NOT_TRAFFIC, QueryError
from servescope.cli.traces import load_spans
from servescope.telemetry.pipeline import PIPELINE

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

LAB = "intermediate/04-error-spike-to-trace-and-logs"
SERVICES = ("preprocess", "classifier", "postprocess")
STEPS = tuple(step for service in SERVICES for step in PIPELINE.fault_steps(service))
FAULT_KIND = "fault_injected"  # the runtime's `error` fault: 500 with this kind
TRACE_ID = re.compile(r"\b[0-9a-f]{32}\b")
EDGE = f'job="preprocess", http_route!~"{NOT_TRAFFIC}"'
RATIO = (
    "(sum(rate(http_server_request_duration_seconds_count"
    f'{{{EDGE}, http_response_status_code=~"5.."}}[1m])) or vector(0))'
    f" / sum(rate(http_server_request_duration_seconds_count{{{EDGE}}}[1m]))"
)


def _log_lines(ctx: CheckContext, service: str, trace_id: str) -> list[dict]:
    lines = []
    try:
        text = (ctx.log_dir / f"{service}.log").read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if trace_id not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("trace_id") == trace_id:
            lines.append(entry)
    return lines


def _edge_spike(ctx: CheckContext) -> None:
    try:
        samples = ctx.query(RATIO)
    except QueryError as exc:
        ctx.fail("the edge is failing requests (5xx ratio in Prometheus)", str(exc))
        return
    ratio = samples[0].value if samples else 0.0
    ctx.require(
        ratio > 0,
        f"the edge is failing requests (5xx ratio {ratio:.3f} in Prometheus)",
        f"no 5xx at the edge in the last minute: is the lab running? `servescope lab restart "
        f"{LAB}` switches the fault on again",
    )


def check(ctx: CheckContext) -> None:
    fault = ctx.state.get("error")
    if not ctx.require(
        bool(fault),
        "the lab chose its failing step",
        f"start the lab first: servescope lab start {LAB}",
    ):
        return
    assert fault is not None
    _edge_spike(ctx)
    answer = (ctx.answer or "").strip().lower()
    if not ctx.require(
        answer,
        "you answered the failing service, step, error kind and a failing trace id",
        f"servescope lab answer {LAB} SERVICE STEP KIND TRACE_ID   (start from the edge's 5xx "
        f"ratio; `servescope lab hint {LAB}` helps)",
    ):
        return
    trace_ids = TRACE_ID.findall(answer)
    words = [w for w in re.split(r"[\s:/,=]+", TRACE_ID.sub(" ", answer)) if w]
    service = next((w for w in words if w in SERVICES), None)
    step = next((w for w in words if w in STEPS and w != service), None)
    kind = next(
        (w for w in words if w not in SERVICES and w not in STEPS and "_" in w),
        next((w for w in words if w not in SERVICES and w not in STEPS), None),
    )
    downstream = fault["service"] != "preprocess"

    right_service = service == fault["service"]
    if service is None:
        why = f"name the service the failure starts in: one of {', '.join(SERVICES)}"
    elif service == "preprocess" and downstream:
        why = (
            "the edge answers 5xx, but it only passes on a failure from further down: in the "
            "waterfall, the deepest span marked ERROR is where it starts"
        )
    else:
        why = (
            f"{service}'s spans are not where these requests fail: follow a failing trace id "
            "to the deepest span marked ERROR"
        )
    ctx.require(right_service, "the failing service is right", why)

    ctx.require(
        right_service and step == fault["step"],
        "the failing step is right",
        f"the step is the name of the failing service's span in ERROR (its steps: "
        f"{', '.join(PIPELINE.fault_steps(fault['service']))})"
        if right_service
        else f"name a step of the failing service ({', '.join(STEPS)} are the pipeline's steps)",
    )

    if kind == FAULT_KIND:
        ctx.ok("the error kind is right")
    elif kind and kind.endswith("_error"):
        ctx.fail(
            "the error kind is right",
            f"{kind} is how the edge labels a failure it received from a downstream service; "
            "the failing service's own `request_failed` log line has the kind it failed with",
        )
    else:
        ctx.fail(
            "the error kind is right",
            "the kind is the `kind` field of the failing service's `request_failed` log line "
            "(also in the 500's JSON body)",
        )

    if not ctx.require(
        trace_ids,
        "the answer carries a trace id (32 hex digits)",
        "copy the trace_id of one failing request from the edge's log (a line with a 5xx "
        "status) and follow it with `servescope trace TRACE_ID`",
    ):
        return
    trace_id = trace_ids[0]
    spans = load_spans(ctx.trace_dir).get(trace_id, [])
    if not ctx.require(
        spans,
        "the trace is in the trace files",
        f"no spans with that id in {ctx.trace_dir}: was the lab restarted since? Take a "
        "recent failing request",
    ):
        return
    failed = [
        s
        for s in spans
        if s.service == fault["service"] and s.name == fault["step"] and s.status == "ERROR"
    ]
    if not failed:
        in_error = [s for s in spans if s.status == "ERROR"]
        ctx.fail(
            "that request failed in the failing step",
            "that request succeeded: every span of it is OK. Pick a trace id from a line with "
            "a 5xx status"
            if not in_error
            else "that request failed, but not in the step the lab broke: is it a real "
            "failure of the spike? Look for the deepest span in ERROR",
        )
    else:
        ctx.ok("that request failed in the failing step")

    passed_through = sorted({s.service for s in spans})
    missing = [name for name in passed_through if not _log_lines(ctx, name, trace_id)]
    ctx.require(
        not missing,
        f"its log lines are in every service it went through ({', '.join(passed_through)})",
        f"no line with that trace id in {', '.join(f'.run/{m}.log' for m in missing)}: "
        f"`grep {trace_id} .run/*.log`",
    )
    own = [
        e
        for e in _log_lines(ctx, fault["service"], trace_id)
        if e.get("event") == "request_failed" and e.get("kind") == FAULT_KIND
    ]
    ctx.require(
        bool(own) and bool(failed),
        f"{fault['service']}'s log says why that request failed",
        f"`grep {trace_id} .run/{fault['service']}.log` has no request_failed line for it: "
        "take a trace id of a request that failed in the failing step",
    )
