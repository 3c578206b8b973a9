"""`servescope trace`: a trace waterfall from local mode's span files."""

from __future__ import annotations

import argparse
from pathlib import Path

from servescope.cli.output import say as _say


def cmd_trace(args: argparse.Namespace) -> int:
    from servescope.cli.traces import load_spans, render, slowest_traces

    directory = Path(args.dir)
    traces = load_spans(directory)
    if not traces:
        _say(
            f"no spans in {directory}/; run `servescope up` (it records traces there) and send "
            "some requests, or point --dir at another span directory"
        )
        return 1
    if args.trace_id:
        wanted = args.trace_id.lower()
        matches = [t for t in traces if t.startswith(wanted)]
        if len(matches) != 1:
            _say(f"{'no' if not matches else 'several'} traces match {args.trace_id!r}")
            return 1
        chosen = matches
    else:
        chosen = slowest_traces(traces, args.slowest or 1)
    _say("\n\n".join(render(trace_id, traces[trace_id]) for trace_id in chosen))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trace = sub.add_parser("trace", help="print a trace waterfall from local mode's spans")
    trace.add_argument("trace_id", nargs="?", help="a trace id (or a unique prefix of one)")
    trace.add_argument("--slowest", type=int, help="the N slowest traces instead")
    trace.add_argument("--dir", default=".run/traces", help="where local mode writes spans")
    trace.set_defaults(func=cmd_trace)
