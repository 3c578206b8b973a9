"""Checker for beginner/05-pod-cpu-and-memory: the container series of the lab's cgroups,
read from its Prometheus (jobs kubelet and kube-state-metrics, cAdvisor's names).

1. The answer names the throttled container (the one whose share of CFS periods throttled
   is highest, the classifier) and its working set in MiB within 10% (at least 8 MiB) of
   container_memory_working_set_bytes now; RSS, cache or the usage given instead are named.
2. The fix: work/limits.env gives the classifier more CPU than the 100m it started with, the
   limit in effect (container_spec_cpu_quota) is that one (the lab was restarted), the
   workload is unchanged (the `cpu` fault still on), and throttling stopped rising: under
   5% of the classifier's periods throttled since it restarted (at least 10 s of data).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from servescope.cli.labs.workspace import read_env_file
from servescope.cli.local.cgroups import parse_limits

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

LAB = "beginner/05-pod-cpu-and-memory"
CONTAINERS = ("preprocess", "classifier", "postprocess")
THROTTLED = "classifier"
START_MILLICORES = 100
MIB = 1024 * 1024
MAX_THROTTLED_SHARE = 0.05
MIN_WINDOW_SECONDS = 10
MAX_WINDOW_SECONDS = 30


def _one(ctx: CheckContext, expr: str) -> float | None:
    samples = ctx.query(expr)
    return samples[0].value if samples else None


def _memory(ctx: CheckContext, metric: str, container: str) -> float | None:
    return _one(ctx, f'sum({metric}{{job="kubelet", container="{container}"}})')


def _grade_answer(ctx: CheckContext) -> None:
    answer = (ctx.answer or "").strip().lower()
    if not ctx.require(
        answer,
        "you answered the throttled container and its working set",
        f"servescope lab answer {LAB} CONTAINER MIB   (`servescope lab hint {LAB}` shows "
        "where to look)",
    ):
        return
    container = next((w for w in re.split(r"[\s,:=]+", answer) if w in CONTAINERS), None)
    numbers = re.findall(r"\d+(?:\.\d+)?", answer)
    ctx.require(
        container == THROTTLED,
        "the throttled container is right",
        "compare the share of throttled periods of each container: "
        "rate(container_cpu_cfs_throttled_periods_total[1m]) / "
        "rate(container_cpu_cfs_periods_total[1m]); only a container with a CPU limit has them"
        if container
        else f"name one of {', '.join(CONTAINERS)}",
    )
    working_set = _memory(ctx, "container_memory_working_set_bytes", THROTTLED)
    if not ctx.require(
        working_set,
        "the classifier's working set is in Prometheus",
        "no container_memory_working_set_bytes for the classifier: is the lab running? "
        f"`servescope lab restart {LAB}`",
    ):
        return
    assert working_set is not None
    if not ctx.require(
        numbers,
        "the answer has the working set in MiB",
        "add the number: container_memory_working_set_bytes / 1048576",
    ):
        return
    given = float(numbers[-1])
    live = working_set / MIB
    tolerance = max(8.0, 0.10 * live)
    if abs(given - live) <= tolerance:
        ctx.ok(f"the working set is right ({given:g} MiB; {live:.0f} MiB now)")
        return
    others = {
        "that is the RSS (container_memory_rss), the process's anonymous memory; the working "
        "set also counts page cache that cannot be dropped, here 48 MiB on tmpfs": _memory(
            ctx, "container_memory_rss", THROTTLED
        ),
        "that is the page cache (container_memory_cache) alone": _memory(
            ctx, "container_memory_cache", THROTTLED
        ),
        "that is the usage (container_memory_usage_bytes), which counts cache the kernel can "
        "drop; the working set subtracts the inactive files": _memory(
            ctx, "container_memory_usage_bytes", THROTTLED
        ),
        "that is the limit, not what the container uses": _memory(
            ctx, "container_spec_memory_limit_bytes", THROTTLED
        ),
    }
    why = next(
        (
            meaning
            for meaning, value in others.items()
            if value and abs(given - value / MIB) <= max(2.0, 0.05 * value / MIB)
        ),
        None,
    )
    if why is None and given > 10 * live:
        why = "that looks like bytes or KiB: divide the bytes by 1048576 for MiB"
    ctx.fail(
        f"the working set is right: yours is {given:g} MiB, the classifier's is {live:.0f} MiB now",
        why
        or 'read container_memory_working_set_bytes{container="classifier"} at '
        "http://127.0.0.1:9090 and divide by 1048576",
    )


def _grade_fix(ctx: CheckContext) -> None:
    path = ctx.workspace / "limits.env"
    try:
        limits = read_env_file(path)
        spec = parse_limits(limits.get(THROTTLED, ""))
    except (OSError, ValueError) as exc:
        ctx.fail(
            "work/limits.env is readable",
            f"{exc}. Lines are SERVICE=memory:256Mi,cpu:500m; `servescope lab reset {LAB}` "
            "gives you the starter back",
        )
        return
    wanted = spec.cpu_millicores
    if not ctx.require(
        wanted is None or wanted > START_MILLICORES,
        "work/limits.env gives the classifier more CPU",
        f"the classifier's cpu limit in work/limits.env is still {wanted}m: how much CPU does "
        'it use? rate(container_cpu_usage_seconds_total{container="classifier"}[1m]) is in '
        "CPUs (0.1 = 100m); leave room for bursts",
    ):
        return
    quota = _one(ctx, 'container_spec_cpu_quota{job="kubelet", container="classifier"}')
    period = _one(ctx, 'container_spec_cpu_period{job="kubelet", container="classifier"}')
    in_effect = round(quota * 1000 / period) if quota and period else None
    ctx.require(
        in_effect == wanted,
        "the classifier runs with the limit in work/limits.env",
        f"the limit in effect is {in_effect}m"
        if in_effect
        else "no CPU limit in effect"
        f": a limit applies when the container starts: `servescope lab restart {LAB}`",
    )
    fault = _one(ctx, 'servescope_fault_value{job="classifier", kind="cpu"}')
    ctx.require(
        fault and fault > 0,
        "the workload is the same (each inference still needs its CPU)",
        "the classifier's cpu fault is off: fix the limit, not the load. `servescope lab "
        f"restart {LAB}` switches it on again",
    )
    uptime = _one(ctx, 'time() - process_start_time_seconds{job="classifier"}') or 0.0
    window = int(min(MAX_WINDOW_SECONDS, uptime - 3))
    if not ctx.require(
        window >= MIN_WINDOW_SECONDS,
        "the classifier has run long enough with its limit to judge",
        f"it restarted {uptime:.0f} s ago: wait {MIN_WINDOW_SECONDS + 3 - uptime:.0f} s more "
        "and check again",
    ):
        return
    selector = '{job="kubelet", container="classifier"}'
    throttled = _one(
        ctx, f"increase(container_cpu_cfs_throttled_periods_total{selector}[{window}s])"
    )
    periods = _one(ctx, f"increase(container_cpu_cfs_periods_total{selector}[{window}s])")
    if wanted is None and throttled is None:
        ctx.ok("throttling stopped (no CPU limit, no CFS quota)")
        return
    share = (throttled or 0.0) / periods if periods else 0.0
    ctx.require(
        periods and share < MAX_THROTTLED_SHARE,
        f"throttling stopped rising (last {window} s: {share:.0%} of periods throttled)",
        "still throttled: a limit must cover the bursts, not only the average. Raise it more "
        "and restart",
    )


def check(ctx: CheckContext) -> None:
    up = ctx.query('up{job="kubelet"} == 1')
    if not ctx.require(
        up,
        "the container series are in Prometheus (job kubelet)",
        f"no kubelet target up: is the lab running (`servescope lab start {LAB}`)? "
        "`servescope lab status` shows its processes; .run/kubelet.log says why the cgroups "
        "could not be made (this lab needs writable memory and cpu cgroups)",
    ):
        return
    has_cgroup = ctx.query(
        'container_memory_working_set_bytes{job="kubelet", container="classifier"}'
    )
    if not ctx.require(
        has_cgroup,
        "the classifier runs in a cgroup of its own",
        "no cAdvisor series for the classifier: see .run/kubelet.log (this lab needs writable "
        "memory and cpu cgroups; in a container, run it with --privileged or on the host)",
    ):
        return
    _grade_answer(ctx)
    _grade_fix(ctx)
