"""`servescope trace`: a trace waterfall in the terminal, from local mode's span files.

Each service writes its finished spans as JSON lines (.run/traces/<service>.jsonl). A trace
is every span with one trace id; the waterfall indents children under parents, shows each
span's service, name, offset and duration, and ends with the step that took the longest
time of its own (time not spent in its children), which is where a slow trace is slow.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]
    children: list[Span] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    @property
    def self_ms(self) -> float:
        """Time in this span not covered by its children (children may run in sequence)."""
        covered = 0
        cursor = self.start_ns
        for child in sorted(self.children, key=lambda c: c.start_ns):
            start = max(child.start_ns, cursor)
            end = min(child.end_ns, self.end_ns)
            if end > start:
                covered += end - start
                cursor = end
        return (self.end_ns - self.start_ns - covered) / 1e6


def load_spans(directory: Path) -> dict[str, list[Span]]:
    """Spans by trace id, from every *.jsonl file in `directory`."""
    traces: dict[str, list[Span]] = defaultdict(list)
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                raw = json.loads(line)
                span = Span(**{k: raw[k] for k in Span.__dataclass_fields__ if k != "children"})
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash; the rest still makes a waterfall
            traces[span.trace_id].append(span)
    return dict(traces)


def build_tree(spans: list[Span]) -> list[Span]:
    """The root spans of one trace, children attached and ordered by start."""
    by_id = {span.span_id: span for span in spans}
    for span in spans:
        span.children = []
    roots = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = by_id.get(span.parent_span_id or "")
        if parent is None:
            roots.append(span)
        else:
            parent.children.append(span)
    return roots


def _walk(span: Span, depth: int = 0) -> list[tuple[int, Span]]:
    rows = [(depth, span)]
    for child in span.children:
        rows.extend(_walk(child, depth + 1))
    return rows


def render(trace_id: str, spans: list[Span], width: int = 32) -> str:
    roots = build_tree(spans)
    rows = [row for root in roots for row in _walk(root)]
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns for s in spans)
    total = max(end - start, 1)
    services = sorted({s.service for s in spans})
    lines = [
        f"trace {trace_id}  {total / 1e6:.1f} ms  {len(spans)} spans  "
        f"services: {', '.join(services)}"
    ]
    label_width = max(len(f"{'  ' * d}{s.service} {s.name}") for d, s in rows) + 2
    for depth, span in rows:
        offset = int((span.start_ns - start) / total * width)
        length = max(1, round((span.end_ns - span.start_ns) / total * width))
        bar = " " * offset + "#" * min(length, width - offset)
        label = f"{'  ' * depth}{span.service} {span.name}"
        flag = "  ERROR" if span.status == "ERROR" else ""
        lines.append(f"{label:<{label_width}}|{bar:<{width}}| {span.duration_ms:9.1f} ms{flag}")
    slowest = max(spans, key=lambda s: s.self_ms)
    share = slowest.self_ms / (total / 1e6) * 100
    lines.append(
        f"slowest step: {slowest.service} {slowest.name} "
        f"({slowest.self_ms:.1f} ms of its own, {share:.0f}% of the trace)"
    )
    return "\n".join(lines)


def slowest_traces(traces: dict[str, list[Span]], count: int) -> list[str]:
    def duration(spans: list[Span]) -> int:
        return max(s.end_ns for s in spans) - min(s.start_ns for s in spans)

    return sorted(traces, key=lambda t: duration(traces[t]), reverse=True)[:count]
