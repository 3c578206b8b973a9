"""Checker for intermediate/01-slow-stage-from-trace: the learner's `SERVICE STEP` against
the step `lab start` slowed (kept in ctx.state by setup.py, never in the repository)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from servescope.cli.traces import load_spans

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

LAB = "intermediate/01-slow-stage-from-trace"
SERVICES = ("preprocess", "classifier", "postprocess")


def _same_step(answered: str, actual: str) -> bool:
    """A step by its fault name or its span name (the same in this pipeline; an older
    span name may carry a suffix, e.g. softmax / softmax_topk)."""
    return answered == actual or answered.startswith(actual) or actual.startswith(answered)


def check(ctx: CheckContext) -> None:
    fault = ctx.state.get("fault")
    if not ctx.require(
        fault,
        "the lab slowed a step when it started",
        f"start the lab: servescope lab start {LAB}",
    ):
        return
    ctx.require(
        load_spans(ctx.trace_dir),
        "traces were recorded",
        f"no spans in {ctx.trace_dir}: the services write them while the lab runs; wait a few "
        "seconds and look again with `servescope trace --slowest 3`",
    )
    answer = (ctx.answer or "").strip().lower()
    if not ctx.require(
        answer,
        "you answered which service and step are slow",
        f"servescope lab answer {LAB} SERVICE STEP   (from `servescope trace --slowest 3`)",
    ):
        return
    words = [w for w in re.split(r"[\s:/,]+", answer) if w]
    service = next((w for w in words if w in SERVICES), None)
    rest = [w for w in words if w != service]
    step = rest[-1] if rest else ""
    right_service = service == fault["service"]
    ctx.require(
        right_service,
        "the slow service is right",
        "answer the service whose span holds the slow time, not the one that waits for it: "
        "a parent span's duration includes its children, so look at time of its own (the "
        '"slowest step:" line)'
        if service
        else f"name one of {', '.join(SERVICES)} and a step, e.g. `classifier infer`",
    )
    ctx.require(
        right_service and _same_step(step, fault["step"]),
        "the slow step is right",
        "which span of that service has the most time of its own? Its name is the step"
        if right_service
        else "first find the service; its slow span's name is the step",
    )
