"""`servescope bench` (make bench): what telemetry costs, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from servescope.cli.output import say as _say


def cmd_flamegraphs(args: argparse.Namespace) -> int:
    from servescope.cli.bench.flamegraphs import record

    try:
        record(args.flamegraphs, args.label, args.configs.split(","), args.duration, say=_say)
    except RuntimeError as exc:
        _say(f"error: {exc}")
        return 1
    _say(f"written: {args.flamegraphs}/{args.label}-*.svg, .json; shares.json")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.flamegraphs:
        return cmd_flamegraphs(args)
    from servescope.cli.bench.runner import run_bench
    from servescope.cli.paths import repo_root

    out = args.out or repo_root() / "docs"
    try:
        report = run_bench(
            args.rounds, args.seconds, out, peers=not args.no_peers, recipe=not args.no_recipe
        )
    except RuntimeError as exc:
        _say(f"error: {exc}")
        return 1
    for key, value in report["ratios"].items():
        _say(f"{key}: {value:.2f}")
    _say(f"written: {', '.join(str(out / f'benchmarks.{ext}') for ext in ('md', 'json', 'png'))}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="measure what telemetry costs (writes docs/benchmarks.md)")
    bench.add_argument("--rounds", type=int, default=6)
    bench.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    bench.add_argument("--no-peers", action="store_true", help="leave out KServe and MLServer")
    bench.add_argument(
        "--no-recipe",
        action="store_true",
        help="leave out the recipe (instrumentator, opentelemetry-instrument, structlog)",
    )
    bench.add_argument("--out", type=Path, help="report folder (default: docs/)")
    bench.add_argument(
        "--flamegraphs",
        type=Path,
        metavar="DIR",
        help="instead: py-spy flame graphs of each service under wrk c=8, telemetry's share",
    )
    bench.add_argument("--label", default="after", help="--flamegraphs: names the files")
    bench.add_argument("--configs", default="default,full", help="--flamegraphs: from CONFIGS")
    bench.add_argument("--duration", type=int, default=10, help="--flamegraphs: seconds")
    bench.set_defaults(func=cmd_bench)
