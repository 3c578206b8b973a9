"""Reference solution: the limits file is already the solution's (copied over work/); restart
with it, answer the throttled container and its working set, and give the new limit 15 s of
data so the check can judge it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

MIB = 1024 * 1024


def solve(ctx: CheckContext) -> None:
    # 1. Which container is throttled? The highest share of throttled periods.
    shares = ctx.query(
        "sum by (container) (rate(container_cpu_cfs_throttled_periods_total[1m])) / "
        "sum by (container) (rate(container_cpu_cfs_periods_total[1m]))"
    )
    throttled = max(shares, key=lambda s: s.value).labels["container"] if shares else "classifier"
    # 2. The fix: restart with work/limits.env (1 CPU for the classifier).
    ctx.restart()
    time.sleep(16)
    # 3. The working set now, in MiB.
    samples = ctx.query(
        f'container_memory_working_set_bytes{{job="kubelet", container="{throttled}"}}'
    )
    ctx.record_answer(f"{throttled} {samples[0].value / MIB:.0f}")
