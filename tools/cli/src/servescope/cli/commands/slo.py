"""`servescope slo generate|validate`: SLOs as code (Sloth specs -> Prometheus rules)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from servescope.cli.paths import repo_root
from servescope.cli.slo import (
    OUTPUT,
    PERIOD,
    SPECS_DIR,
    SLOError,
    _num,
    load_all,
    load_file,
    parse_extra_labels,
    render_files,
    spec_files,
)


def _expand(paths: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        found.extend(spec_files(path) if path.is_dir() else [path])
    return found


def cmd_slo_generate(args: argparse.Namespace) -> int:
    root = repo_root()
    paths = _expand(args.specs) if args.specs else spec_files(root / SPECS_DIR)
    warnings: list[str] = []
    try:
        extra = parse_extra_labels(args.extra_labels or [])
        content = render_files(
            paths, root, strict=args.strict, warnings=warnings, extra_labels=extra
        )
    except SLOError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    if args.out == "-":
        sys.stdout.write(content)
        return 0
    out = Path(args.out) if args.out else root / OUTPUT
    current = out.read_text() if out.exists() else None
    if args.check:
        if current != content:
            print(f"{out} is out of date; run `servescope slo generate`", file=sys.stderr)
            return 1
        print(f"{out} is up to date ({len(load_all(paths, strict=False))} SLOs)")
        return 0
    if current != content:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(content)
        print(f"written: {out}")
    else:
        print(f"unchanged: {out}")
    return 0


def cmd_slo_validate(args: argparse.Namespace) -> int:
    paths = _expand(args.specs) if args.specs else spec_files(repo_root() / SPECS_DIR)
    failed = 0
    for path in paths:
        warnings: list[str] = []
        try:
            slos = load_file(path, strict=args.strict, warnings=warnings)
        except SLOError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        finally:
            for warning in warnings:
                print(f"warning: {warning}", file=sys.stderr)
        for slo in slos:
            alerts = ", ".join(m.name for m in (slo.page, slo.ticket) if m) or "no alerts"
            print(f"ok: {path}: {slo.id} objective {_num(slo.objective)}% over {PERIOD} ({alerts})")
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    slo = subparsers.add_parser(
        "slo", help="SLOs as code: validate Sloth specs and generate their Prometheus rules"
    )
    sub = slo.add_subparsers(dest="slo_command", required=True)
    generate = sub.add_parser(
        "generate", help=f"write the rules for the specs (default {SPECS_DIR}/ -> {OUTPUT})"
    )
    generate.add_argument("specs", nargs="*", help="spec files or folders")
    generate.add_argument("--out", help=f"output file, '-' for stdout (default {OUTPUT})")
    generate.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the output is out of date"
    )
    generate.add_argument(
        "--extra-labels",
        action="append",
        metavar="KEY=VALUE",
        help="a label added to every generated rule (repeatable), as Sloth's CLI does",
    )
    generate.set_defaults(func=cmd_slo_generate)
    validate = sub.add_parser("validate", help="check specs against the telemetry contract")
    validate.add_argument("specs", nargs="*", help=f"spec files or folders (default {SPECS_DIR}/)")
    for command in (generate, validate):
        command.add_argument(
            "--strict",
            action="store_true",
            help="refuse metrics the telemetry contract does not declare (default: warn); "
            "the project's own specs are generated strict by `make generate`",
        )
    validate.set_defaults(func=cmd_slo_validate)
