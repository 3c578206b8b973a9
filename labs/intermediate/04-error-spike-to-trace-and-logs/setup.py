"""Start-up for intermediate/04-error-spike-to-trace-and-logs: one step of one service,
chosen at random, fails a share of the requests through it.

The runtime's `error` fault (servescope.telemetry.faultspec, servescope.runtime.faults)
makes the step raise a 500 with kind `fault_injected` and the step's stage in the body, in
the service's log (`request_failed`) and on its span. The choice is made once per run and
kept in ctx.state (never in the repository); every start and restart switches it on again.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from servescope.telemetry.pipeline import PIPELINE

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

SERVICES = ("preprocess", "classifier", "postprocess")
SHARE = 0.25  # a quarter of the requests through the step fail: a spike, not an outage


def setup(ctx: CheckContext) -> None:
    choice = ctx.state.get("error")
    if not choice:
        rng = random.SystemRandom()
        service = rng.choice(SERVICES)
        choice = {
            "service": service,
            "step": rng.choice(PIPELINE.fault_steps(service)),
            "share": SHARE,
        }
        ctx.state["error"] = choice
        ctx.save_state()
    status, body = ctx.admin(
        choice["service"],
        "PUT",
        "/admin/faults",
        {"kind": "error", "step": choice["step"], "value": choice["share"]},
    )
    if status != 200:
        raise RuntimeError(f"could not switch the error fault on in {choice['service']}: {body}")
