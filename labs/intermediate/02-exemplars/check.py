"""Checker for intermediate/02-exemplars: the learner's trace id must be an exemplar of the
edge's request-duration histogram, in a bucket above 200 ms (a slow request, not just any),
and that trace must exist in the trace files."""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Any

from servescope.cli.traces import load_spans

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

LAB = "intermediate/02-exemplars"
HISTOGRAM = 'http_server_request_duration_seconds_bucket{job="preprocess"}'
SLOW = 0.2  # seconds: the latency objective's threshold, a bucket boundary


def exemplar_buckets(found: list[dict[str, Any]]) -> dict[str, float]:
    """trace id -> the `le` of the bucket its exemplar sits in."""
    buckets: dict[str, float] = {}
    for series in found:
        le = float(series.get("seriesLabels", {}).get("le", "nan"))
        for exemplar in series.get("exemplars", []):
            trace_id = exemplar.get("labels", {}).get("trace_id")
            if trace_id:
                buckets[trace_id.lower()] = le
    return buckets


def check(ctx: CheckContext) -> None:
    answer = (ctx.answer or "").strip().lower()
    if not ctx.require(
        answer,
        "you answered with a trace id",
        f"servescope lab answer {LAB} TRACE_ID   (`servescope lab hint {LAB}` shows how to "
        "ask Prometheus for exemplars)",
    ):
        return
    found = re.search(r"\b[0-9a-f]{32}\b", answer)
    if not ctx.require(
        found,
        "the answer is a trace id (32 hex digits)",
        "a W3C trace id is 32 hex digits, e.g. 4bf92f3577b34da6a3ce929d0e0e4736: copy the "
        "trace_id label of an exemplar",
    ):
        return
    assert found is not None
    trace_id = found.group(0)
    start = ctx.started_at or time.time() - 3600
    buckets = exemplar_buckets(ctx.exemplars(HISTOGRAM, start, time.time()))
    le = buckets.get(trace_id)
    if le is None:
        elsewhere = exemplar_buckets(ctx.exemplars('{__name__=~".+_bucket"}', start, time.time()))
        ctx.fail(
            "it is an exemplar of the edge's request-duration histogram",
            "it is an exemplar of another histogram; this lab asks for "
            'http_server_request_duration_seconds on the edge (job="preprocess")'
            if trace_id in elsewhere
            else "Prometheus has no exemplar with that trace id: query "
            f"/api/v1/query_exemplars for {HISTOGRAM} and copy a trace_id from its answer",
        )
        return
    ctx.ok("it is an exemplar of the edge's request-duration histogram")
    slowest = max((v for v in buckets.values() if not math.isnan(v)), default=le)
    ctx.require(
        le > SLOW,
        f"it comes from a slow bucket (above {SLOW * 1000:.0f} ms)",
        f"that exemplar sits in the le={le:g} bucket, a fast request. Look at the series with "
        f"the largest le that has exemplars (le={slowest:g} now)",
    )
    traces = load_spans(ctx.trace_dir)
    ctx.require(
        trace_id in traces,
        "the trace is in the trace files (servescope trace shows it)",
        f"no spans with that id in {ctx.trace_dir}: the lab was restarted since? Pick a recent "
        "exemplar",
    )
