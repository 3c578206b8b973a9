"""Reference solution: the four steps of the drill.

1. Which container restarts, and why: Prometheus's kube-state-metrics series (restarts,
   last termination reason OOMKilled).
2. Which memory reached the limit: the cgroup's usage and page cache climb to
   container_spec_memory_limit_bytes while the process's RSS stays well under it.
3. Answer, then the fix: once the classifier is back, the `cache` fault off (what
   `servescope fault classifier --clear` does), which also deletes its tmpfs file.
4. Validate: wait until a whole window of traffic has passed with no restart and usage
   under the limit.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

CADVISOR = 'container="classifier", image!=""'
KSM = 'job="kube-state-metrics", container="classifier"'


def _value(ctx: CheckContext, expr: str) -> float | None:
    samples = ctx.query(expr)
    return samples[0].value if samples else None


def solve(ctx: CheckContext) -> None:
    # 1. The container that restarts, and its last termination reason.
    reason = (
        "max by (container, reason) (max_over_time("
        f"kube_pod_container_status_last_terminated_reason{{{KSM}}}[1h])) == 1"
    )
    found = ctx.wait_for(lambda: ctx.query(reason), timeout=60, interval=0.5)
    if not found:
        raise RuntimeError("the classifier was not OOM killed within a minute")
    container, why = found[0].labels["container"], found[0].labels["reason"]
    # 2. Which series reached the limit: usage (page cache in it), not RSS.
    limit = _value(ctx, f"max(container_spec_memory_limit_bytes{{{CADVISOR}}})") or 0
    usage = _value(ctx, f"max(max_over_time(container_memory_usage_bytes{{{CADVISOR}}}[5m]))") or 0
    rss = _value(ctx, 'max(max_over_time(process_resident_memory_bytes{job="classifier"}[5m]))')
    series = "cache usage" if usage >= 0.8 * limit and (rss or 0) < 0.65 * limit else "rss"
    ctx.record_answer(f"{container} {why} {series}")

    # 3. The fix, on the live process (it is in its back-off for a moment after each kill).
    def cleared() -> bool:
        status, _ = ctx.admin("classifier", "DELETE", "/admin/faults")
        return status == 200

    if not ctx.wait_for(cleared, timeout=60, interval=0.2):
        raise RuntimeError("could not switch the classifier's faults off")
    # 4. Validate: a whole window of clean traffic.
    time.sleep(0.5)
    window = "10s"
    clean = (
        f"sum(changes(kube_pod_container_status_restarts_total{{{KSM}}}[{window}])) == 0 "
        f'and on() min_over_time(up{{job="classifier"}}[{window}]) == 1 '
        f'and on() count_over_time(up{{job="classifier"}}[{window}]) >= 8'
    )
    if not ctx.wait_for(lambda: ctx.query(clean), timeout=60, interval=1):
        raise RuntimeError("the classifier did not stay up after the fix")
