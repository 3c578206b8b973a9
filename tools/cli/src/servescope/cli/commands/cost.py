"""`servescope cost`: what observability costs at N models, with everything kept and with the
cost profile, measured on the local stack (servescope.cli.cost); writes docs/cost.md."""

from __future__ import annotations

import argparse


def cmd_cost(args: argparse.Namespace) -> int:
    from servescope.cli.cost.main import main  # the measuring machinery, loaded when used

    return main(args)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cost = sub.add_parser(
        "cost", help="measure observability spend with and without the cuts (docs/cost.md)"
    )
    cost.add_argument("--models", type=int, default=50, help="fleet size of the main runs")
    cost.add_argument("--seconds", type=float, default=60.0, help="measuring time per main run")
    cost.add_argument(
        "--rate", type=float, default=20.0, help="predictions/s at --models (smaller: its share)"
    )
    cost.add_argument(
        "--sizes", default="10,25", help="smaller fleets measured for the projection ('' none)"
    )
    cost.add_argument("--size-seconds", type=float, default=30.0, help="per projection run")
    cost.add_argument("--warmup", type=float, default=15.0, help="seconds before measuring")
    cost.add_argument("--drill-seconds", type=float, default=20.0, help="slow-step drill time")
    cost.add_argument("--run-dir", default=".run/cost", help="where the runs' files go")
    cost.add_argument("--out", default="docs/cost.md")
    cost.add_argument("--json", default="docs/cost.json")
    cost.add_argument(
        "--dashboard-picture",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also draw the cost dashboard over SECONDS kept then SECONDS cut (0: no picture)",
    )
    cost.add_argument("--picture-out", default="docs/dashboards/servescope-cost.png")
    cost.add_argument(
        "--reprice",
        action="store_true",
        help="no measuring: reprice the saved --json at deploy/cost/prices.yaml and rewrite --out",
    )
    cost.set_defaults(func=cmd_cost)
