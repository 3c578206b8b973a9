"""Start-up for intermediate/01-slow-stage-from-trace: slow one step of one service.

The steps come from the running services themselves (GET /admin/faults lists the steps a
service accepts faults on), so the lab follows the pipeline as declared, whatever its steps
are called. The choice is made once per lab run and kept in ctx.state (.run/labs/state/),
so a restart slows the same step again; `servescope lab reset` forgets it.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

SERVICES = ("preprocess", "classifier", "postprocess")
DELAY_SECONDS = 0.3


def setup(ctx: CheckContext) -> None:
    choice = ctx.state.get("fault")
    if not choice:
        candidates = []
        for service in SERVICES:
            status, body = ctx.admin(service, "GET", "/admin/faults")
            if status != 200 or not isinstance(body, dict):
                raise RuntimeError(f"{service} did not list its fault steps ({status})")
            candidates += [(service, str(step)) for step in body.get("steps", [])]
        service, step = random.SystemRandom().choice(candidates)
        choice = {"service": service, "step": step, "delay_seconds": DELAY_SECONDS}
        ctx.state["fault"] = choice
        ctx.save_state()
    status, body = ctx.admin(
        choice["service"],
        "PUT",
        f"/admin/faults/{choice['step']}",
        {"delay_seconds": choice["delay_seconds"]},
    )
    if status != 200:
        raise RuntimeError(f"could not slow {choice['service']} {choice['step']}: {body}")
