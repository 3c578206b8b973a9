"""Start-up for drills/03-crash-loop: one service, chosen at random, exits after N requests.

The runtime's `crash` fault (servescope.telemetry.faultspec) makes the service exit with
status 1 after N requests (probes, scrapes and admin calls do not count) and log
`fault_crash` with the count first. The choice is made once per run and kept in ctx.state;
every start and restart switches it on again, so each restart crashes again.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

SERVICES = ("preprocess", "classifier", "postprocess")


def setup(ctx: CheckContext) -> None:
    choice = ctx.state.get("crash")
    if not choice:
        rng = random.SystemRandom()
        choice = {"service": rng.choice(SERVICES), "requests": rng.randint(20, 60)}
        ctx.state["crash"] = choice
        ctx.save_state()
    status, body = ctx.admin(
        choice["service"], "PUT", "/admin/faults", {"kind": "crash", "value": choice["requests"]}
    )
    if status != 200:
        raise RuntimeError(f"could not switch the crash fault on in {choice['service']}: {body}")
