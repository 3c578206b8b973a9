"""`servescope cost` from its parsed arguments: measure (or reprice a saved run), write the
report, draw the dashboard picture on request, and say what came out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from servescope.cli.cost.report import write
from servescope.cli.cost.run import Plan, reprice, run
from servescope.cli.output import say


def main(args: argparse.Namespace) -> int:
    out, json_path = Path(args.out), Path(args.json)
    plan = Plan(
        models=args.models,
        seconds=args.seconds,
        rate=args.rate,
        sizes=tuple(int(n) for n in args.sizes.split(",") if n.strip()),
        size_seconds=args.size_seconds,
        warmup=args.warmup,
        drill_seconds=args.drill_seconds,
        run_dir=Path(args.run_dir),
        say=say,
    )
    try:
        report = reprice(json.loads(json_path.read_text())) if args.reprice else run(plan)
        write(report, out, json_path)
        if args.dashboard_picture > 0:
            from servescope.cli.cost.picture import draw  # matplotlib, only when asked

            say(f"written: {draw(plan, Path(args.picture_out), args.dashboard_picture)}")
    except (OSError, RuntimeError, ValueError) as exc:
        say(f"error: {exc}")
        return 1
    costs, proof = report["costs"], report["proof"]
    say(
        f"monthly: {costs['kept']['total']:,.2f} -> {costs['cut']['total']:,.2f} "
        f"{report['prices']['currency']} ({100 * costs['share_cut']['total']:.0f}% cut); "
        f"WARNING/ERROR lines lost: {proof['warning_error_lines_lost']:g}; "
        f"queries silenced: {len(proof['expressions']['lost'])}; "
        f"drill: {'right' if proof['drill'].get('ok') else 'not right'}"
    )
    say(f"written: {out}, {out.with_suffix('.svg')}, {json_path}")
    return 0
