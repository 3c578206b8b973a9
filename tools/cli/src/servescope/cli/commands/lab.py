"""`servescope lab`: list, start, check, hint, answer, solve, reset, stop and status of the
labs under labs/ (the logic is servescope.cli.labs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from servescope.cli.output import say as _say


def cmd_lab(args: argparse.Namespace) -> int:
    from servescope.cli.labs import LabError
    from servescope.cli.labs.runner import Runner
    from servescope.cli.paths import repo_root

    root = Path(args.root).resolve() if args.root else repo_root()
    run_dir = Path(args.run_dir).resolve() if args.run_dir else root / ".run"
    runner = Runner(root, run_dir, port_base=args.port_base)
    action = args.lab_command
    try:
        if action == "list":
            return runner.list_labs()
        if action == "status":
            return runner.status()
        if action == "stop":
            return runner.stop(args.id)
        if action == "start":
            return runner.start(args.id, force=args.force)
        if action == "restart":
            return runner.restart(args.id)
        if action == "check":
            return runner.check(args.id)
        if action == "hint":
            return runner.hint(args.id)
        if action == "answer":
            return runner.answer(args.id, args.text)
        if action == "solve":
            return runner.solve(args.id, force=args.force)
        if action == "reset":
            return runner.reset(args.id)
    except LabError as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("interrupted: what had started is stopped (`servescope lab status` shows the rest)")
        return 130
    raise AssertionError(action)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    # Hidden: run a lab against another checkout (the tests' copies) and keep its state apart.
    common.add_argument("--root", help=argparse.SUPPRESS)
    common.add_argument("--run-dir", help=argparse.SUPPRESS)
    common.add_argument(
        "--port-base",
        type=int,
        metavar="PORT",
        help="run the lab's processes on PORT..PORT+5 instead of the defaults of `servescope "
        "up` (also $SERVESCOPE_LAB_PORT_BASE)",
    )
    lab = sub.add_parser(
        "lab",
        help="hands-on labs that grade your work: list, start, check, hint, answer, solve",
        description="Labs set up a broken or unfinished state, you do the work an SRE does, "
        "and `check` grades the real result. Start with `servescope lab list`.",
    )
    lab.set_defaults(func=cmd_lab)
    actions = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")

    def action(
        name: str, help_text: str, lab_id: str | None = "required"
    ) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, parents=[common])
        if lab_id == "required":
            parser.add_argument("id", help="the lab, e.g. beginner/01-readiness-vs-liveness")
        elif lab_id == "optional":
            parser.add_argument("id", nargs="?", help="the lab (default: the running one)")
        return parser

    action("list", "the labs by stage, with your status and time", lab_id=None)
    action("status", "the running lab, its processes and your progress", lab_id=None)
    start = action("start", "set up a lab: workspace, services, Prometheus, its broken state")
    start.add_argument(
        "--force", action="store_true", help="replace edited workspace files with the starter"
    )
    action("restart", "restart the lab's services with your current settings")
    action("check", "grade your work: each criterion, with a hint for what fails")
    action("hint", "the next hint (each call shows a stronger one)")
    answer = action("answer", "record your finding (for labs that ask a question), then check")
    answer.add_argument("text", nargs="+", help="your answer")
    solve = action("solve", "apply the reference solution (refuses on your edits)")
    solve.add_argument("--force", action="store_true", help="overwrite your edits")
    action("reset", "stop the lab and restore its workspace and files as they were")
    action("stop", "stop the lab's processes (keeps your work)", lab_id="optional")
