"""Reference solution: what a responder does with `servescope trace --slowest 3` - take the
slowest traces of whole predictions, and in each the span with the most time of its own;
the step most of them agree on is the answer."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from servescope.cli.traces import build_tree, load_spans, slowest_traces

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext


def _culprits(ctx: CheckContext) -> Counter[tuple[str, str]]:
    # Whole predictions only (spans from all three services): not the lab's own admin calls.
    traces = {
        trace_id: spans
        for trace_id, spans in load_spans(ctx.trace_dir).items()
        if len({span.service for span in spans}) >= 3
    }
    votes: Counter[tuple[str, str]] = Counter()
    for trace_id in slowest_traces(traces, 5):
        spans = traces[trace_id]
        build_tree(spans)  # attaches children, which own-time needs
        slowest = max(spans, key=lambda s: s.self_ms)
        votes[(slowest.service, slowest.name)] += 1
    return votes


def solve(ctx: CheckContext) -> None:
    deadline = time.monotonic() + 15
    votes = _culprits(ctx)
    while sum(votes.values()) < 5 and time.monotonic() < deadline:
        time.sleep(0.5)  # spans reach the files within a second of each request
        votes = _culprits(ctx)
    if not votes:
        raise RuntimeError(f"no traces in {ctx.trace_dir}")
    (service, step), _ = votes.most_common(1)[0]
    ctx.record_answer(f"{service} {step}")
