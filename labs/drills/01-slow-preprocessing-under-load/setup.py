"""Start-up for drills/01-slow-preprocessing-under-load: 500 ms in one pre-processing step.

The step is chosen at random among the steps the running preprocess service accepts faults
on (GET /admin/faults), so the drill follows the pipeline as declared. The choice is made
once per run and kept in ctx.state (.run/labs/state/); `servescope lab reset` forgets it.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

SERVICE = "preprocess"
DELAY_SECONDS = 0.5


def setup(ctx: CheckContext) -> None:
    choice = ctx.state.get("fault")
    if not choice:
        status, body = ctx.admin(SERVICE, "GET", "/admin/faults")
        if status != 200 or not isinstance(body, dict) or not body.get("steps"):
            raise RuntimeError(f"{SERVICE} did not list its fault steps ({status})")
        step = random.SystemRandom().choice([str(s) for s in body["steps"]])
        choice = {"service": SERVICE, "step": step, "delay_seconds": DELAY_SECONDS}
        ctx.state["fault"] = choice
        ctx.save_state()
    status, body = ctx.admin(
        SERVICE, "PUT", f"/admin/faults/{choice['step']}", {"delay_seconds": DELAY_SECONDS}
    )
    if status != 200:
        raise RuntimeError(f"could not slow {SERVICE} {choice['step']}: {body}")
