"""`servescope bench` (make bench): what telemetry costs, side by side."""

from __future__ import annotations

import argparse

from servescope.cli.output import say as _say


def cmd_bench(args: argparse.Namespace) -> int:
    from servescope.cli.bench.runner import run_bench

    try:
        report = run_bench(rounds=args.rounds, seconds=args.seconds)
    except RuntimeError as exc:
        _say(f"error: {exc}")
        return 1
    for key, value in report["ratios"].items():
        _say(f"{key}: {value:.2f}")
    _say("written: docs/benchmarks.md, docs/benchmarks.json, docs/benchmarks.png")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="measure what telemetry costs (writes docs/benchmarks.md)")
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    bench.set_defaults(func=cmd_bench)
