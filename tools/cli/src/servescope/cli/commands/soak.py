"""`servescope soak`: the local stack for a long while under mixed traffic with faults
switching on and off, each service's memory, descriptors and threads sampled from /proc, and
a verdict (servescope.cli.soak); writes docs/soak.md, exits 1 when a goal is missed."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path


def cmd_soak(args: argparse.Namespace) -> int:
    from servescope.cli.output import say
    from servescope.cli.soak import SoakPlan, main

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stops everything, as Ctrl-C
    plan = SoakPlan(
        seconds=args.seconds,
        warmup=args.warmup,
        sample_every=args.sample_every,
        rate=args.rate,
        models_rate=args.models_rate,
        fault_cycle=args.fault_cycle,
        run_dir=Path(args.run_dir),
        say=say,
    )
    json_path = Path(args.json) if args.json else Path(args.run_dir) / "soak.json"
    return main(plan, Path(args.out), json_path, say)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    soak = sub.add_parser(
        "soak", help="run the local stack under traffic and faults; watch memory (docs/soak.md)"
    )
    soak.add_argument("--seconds", type=float, default=600.0, help="how long the traffic runs")
    soak.add_argument(
        "--warmup", type=float, help="seconds left out of the trend (default: a quarter of it)"
    )
    soak.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    soak.add_argument("--rate", type=float, default=8.0, help="mixed predictions/s")
    soak.add_argument("--models-rate", type=float, default=2.0, help="per-model route, /s")
    soak.add_argument(
        "--fault-cycle", type=float, help="seconds per fault, on for a third (default: 1/20 run)"
    )
    soak.add_argument("--run-dir", default=".run/soak", help="where the processes' files go")
    soak.add_argument("--out", default="docs/soak.md")
    soak.add_argument("--json", help="every sample and answer count (default: RUN_DIR/soak.json)")
    soak.set_defaults(func=cmd_soak)
