"""`servescope generate` (make generate): regenerate every generated file."""

from __future__ import annotations

import argparse

from servescope.cli.output import say as _say


def cmd_generate(args: argparse.Namespace) -> int:
    """Regenerate every generated file, or with --check report the ones that drifted."""
    from servescope.cli.generate import generate_all

    stale = generate_all(check=args.check)
    if args.check:
        if stale:
            _say("out of date (run `make generate`): " + ", ".join(stale))
            return 1
        _say("generated files are up to date")
        return 0
    _say("written: " + (", ".join(stale) if stale else "nothing changed"))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    generate = sub.add_parser(
        "generate", help="regenerate generated files (docs/telemetry.md, ...)"
    )
    generate.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is out of date"
    )
    generate.set_defaults(func=cmd_generate)
