"""Checker for drills/04-oomkilled-quiet-memory-graph: the diagnosis, on live evidence, then
the fix, validated.

1. The scenario happened: the classifier runs under a memory limit (cAdvisor's
   container_spec_memory_limit_bytes) and Prometheus saw it terminated with reason
   OOMKilled (kube-state-metrics' last_terminated_reason).
2. The answer names the container (classifier), the reason (OOMKilled, or "OOM" / "out of
   memory" / exit code 137) and a series that reached the limit: the page cache (cache,
   tmpfs, shmem, shared memory) or the cgroup's usage or working set. RSS alone is wrong:
   the process's RSS stayed well under the limit, which is the point of the drill.
3. The fix: the classifier's `cache` fault is off (its admin API), and over the last
   WINDOW of traffic it stayed up, did not restart, and its usage stayed under 80% of the
   limit, with predictions reaching it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

LAB = "drills/04-oomkilled-quiet-memory-graph"
SERVICES = ("preprocess", "classifier", "postprocess")
CONTAINER = "classifier"
WINDOW_SECONDS = 10
WINDOW = f"{WINDOW_SECONDS}s"
CADVISOR = f'container="{CONTAINER}", image!=""'
KSM = f'job="kube-state-metrics", container="{CONTAINER}"'
LIMIT = f"max(container_spec_memory_limit_bytes{{{CADVISOR}}})"
OOM_SEEN = (
    "max(max_over_time(kube_pod_container_status_last_terminated_reason"
    f'{{{KSM}, reason="OOMKilled"}}[1h]))'
)
# Words that say the kernel's OOM killer ended it.
REASON = re.compile(r"oom|out[ -]of[ -]memory|\b137\b")
# Series that reached the limit: the page cache (tmpfs), or usage / working set.
SERIES = re.compile(r"cache|tmpfs|shmem|shared[ _-]?mem|/dev/shm|emptydir|usage|working[ _-]?set")
RSS = re.compile(r"\brss\b|resident")


def _value(ctx: CheckContext, expr: str) -> float | None:
    samples = ctx.query(expr)
    return samples[0].value if samples else None


def _grade_answer(ctx: CheckContext) -> None:
    answer = (ctx.answer or "").strip().lower()
    if not ctx.require(
        answer,
        "you answered the container, the reason and the series that reached the limit",
        f"servescope lab answer {LAB} CONTAINER REASON SERIES",
    ):
        return
    words = set(re.split(r"[^a-z0-9_]+", answer))
    named = [s for s in SERVICES if s in words]
    ctx.require(
        CONTAINER in named,
        "the container being killed is right",
        "the edge's errors follow a downstream that is gone: which container's "
        "kube_pod_container_status_restarts_total goes up?"
        if named
        else f"name one of {', '.join(SERVICES)}",
    )
    ctx.require(
        bool(REASON.search(answer)),
        "the reason is right: OOMKilled",
        "kube_pod_container_status_last_terminated_reason == 1 has the reason as a label; "
        "the kubelet's log line has it too, with the exit code (137: SIGKILL)",
    )
    series = bool(SERIES.search(answer))
    ctx.require(
        series,
        "the series that reached the limit is right: the page cache (tmpfs) in the usage, not RSS",
        "RSS is the process's own memory: did container_memory_rss or "
        "process_resident_memory_bytes come near container_spec_memory_limit_bytes? Compare "
        "container_memory_cache and container_memory_usage_bytes"
        if RSS.search(answer)
        else "name the container_memory_* series that climbed to the limit before each kill",
    )


def _grade_fix(ctx: CheckContext, limit: float) -> None:
    status, body = ctx.admin(CONTAINER, "GET", "/admin/faults")
    faults = body.get("faults", []) if status == 200 and isinstance(body, dict) else None
    writing = faults is None or any(f.get("kind") == "cache" for f in faults)
    ctx.require(
        not writing,
        "the fix is applied: nothing writes to the classifier's tmpfs any more",
        "the classifier is down right now (in its back-off): wait for it to come back, then "
        "act within seconds"
        if faults is None
        else "what fills its page cache is the `cache` fault (tmpfs): switch it off while the "
        "classifier is up, `uv run servescope fault classifier --clear`",
    )
    samples = _value(ctx, f'count_over_time(up{{job="{CONTAINER}"}}[{WINDOW}])') or 0
    up = _value(ctx, f'min_over_time(up{{job="{CONTAINER}"}}[{WINDOW}])')
    restarts = _value(
        ctx,
        f"sum(changes(kube_pod_container_status_restarts_total{{{KSM}}}[{WINDOW}]))",
    )
    usage = _value(ctx, f"max(max_over_time(container_memory_usage_bytes{{{CADVISOR}}}[{WINDOW}]))")
    rate = _value(
        ctx,
        f'sum(rate(http_server_request_duration_seconds_count{{job="{CONTAINER}", '
        f'http_route=~"/v2/models/.*"}}[{WINDOW}]))',
    )
    stable = (
        not writing
        and samples >= WINDOW_SECONDS - 3
        and up == 1
        and restarts == 0
        and usage is not None
        and usage < 0.8 * limit
        and (rate or 0) > 0
    )
    mib = f"{usage / 1048576:.0f} MiB" if usage is not None else "no data"
    ctx.require(
        stable,
        f"the fix is validated: over the last {WINDOW} the classifier stayed up, did not "
        f"restart, served predictions, and its usage stayed under 80% of its "
        f"{limit / 1048576:.0f} MiB limit",
        f"up {up}, restarts in the window {restarts}, peak usage {mib}, predictions "
        f"{rate or 0:.1f}/s: "
        + (
            f"wait {WINDOW_SECONDS} s of clean traffic after the fix and check again"
            if not writing
            else "the writer is still on"
        ),
    )


def check(ctx: CheckContext) -> None:
    limit = _value(ctx, LIMIT)
    if not ctx.require(
        bool(limit),
        "the classifier runs under a memory limit (a cgroup)",
        "no container_spec_memory_limit_bytes for the classifier: `lab start` printed why "
        "the limits are off (this drill needs writable memory cgroups: Linux, cgroup v1 or "
        "v2 with delegation)",
    ):
        return
    assert limit is not None
    ctx.require(
        _value(ctx, OOM_SEEN) == 1,
        "Prometheus saw the classifier OOMKilled",
        "under traffic its memory reaches the limit within seconds of start: wait, and watch "
        "kube_pod_container_status_last_terminated_reason == 1",
    )
    _grade_answer(ctx)
    _grade_fix(ctx, limit)
