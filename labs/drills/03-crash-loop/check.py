"""Checker for drills/03-crash-loop: the learner's `SERVICE REQUESTS CAUSE` against what
`lab start` chose (ctx.state), and the evidence being there: the service's log ends in its
`fault_crash` line and Prometheus saw its target go down."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

LAB = "drills/03-crash-loop"
SERVICES = ("preprocess", "classifier", "postprocess")
CAUSES = {"crash", "crashes", "crashed", "fault", "fault_crash", "exit", "exits", "injected"}


def crash_lines(ctx: CheckContext, service: str) -> list[dict]:
    log = ctx.log_dir / f"{service}.log"
    lines = []
    for line in (log.read_text(errors="replace") if log.is_file() else "").splitlines():
        if '"fault_crash"' in line:
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def check(ctx: CheckContext) -> None:
    crash = ctx.state.get("crash")
    if not ctx.require(crash, "the drill set up a crash when it started", f"lab start {LAB}"):
        return
    service = crash["service"]
    crashes = crash_lines(ctx, service)
    ctx.require(
        crashes,
        "the service has crashed at least once",
        "wait for traffic to reach it (a few seconds), or restart the lab",
    )
    down = ctx.query(f'min_over_time(up{{job="{service}"}}[10m])')
    ctx.require(
        bool(down) and down[0].value == 0,
        "Prometheus saw the crashing target down",
        "wait for a scrape after the crash: `up` is 0 for a target that does not answer",
    )
    answer = (ctx.answer or "").strip().lower()
    if not ctx.require(
        answer,
        "you answered the service, the requests before it exits, and the cause",
        f"servescope lab answer {LAB} SERVICE REQUESTS CAUSE",
    ):
        return
    words = [w for w in re.split(r"[\s,;:/=]+", answer) if w]
    named = next((w for w in words if w in SERVICES), None)
    ctx.require(
        named == service,
        "the crash-looping service is right",
        "the edge fails too when a downstream is gone (its calls fail): which target is `up` 0, "
        "and whose log ends in an exit?"
        if named
        else f"name one of {', '.join(SERVICES)}",
    )
    numbers = {int(w) for w in words if w.isdigit()}
    # Requests in flight when it decides to exit also log the line, one more each.
    counted = {crash["requests"]} | {int(c.get("requests", -1)) for c in crashes}
    ctx.require(
        bool(numbers & counted),
        "the number of requests it serves before exiting is right",
        "the last line of the service's log before it exits carries `requests`: how many "
        "requests it served before the exit",
    )
    ctx.require(
        bool(CAUSES & set(words)),
        "the cause is named: it exits by itself (the injected crash), not killed by the "
        "kernel or a probe",
        "what does the last log line's event say, and with which exit code (1, its own exit; "
        "137 would be a SIGKILL, such as an OOM kill)?",
    )
