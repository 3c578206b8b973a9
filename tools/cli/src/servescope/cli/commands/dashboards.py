"""`servescope dashboards` (what `make dashboards` runs).

servescope dashboards            write dashboards/*.json
servescope dashboards --check    exit 1 when a committed file drifted
servescope dashboards render --prometheus URL [--logs DIR]
                                                   draw docs/dashboards/*.png from the
                                                   data in a running Prometheus (logs
                                                   panels: the services' logs in DIR,
                                                   default .run when it exists)
"""

from __future__ import annotations

import argparse

from servescope.cli.paths import repo_root
from servescope.dashboards import generators


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "dashboards", help="write dashboards/*.json, or `render` pictures of them from real data"
    )
    parser.add_argument("command", nargs="?", choices=["generate", "render"], default="generate")
    parser.add_argument("--check", action="store_true", help="report drift, write nothing")
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="for render")
    parser.add_argument("--minutes", type=float, default=10.0, help="time range for render")
    parser.add_argument(
        "--logs", metavar="DIR", help="render: the services' log files (default: .run)"
    )
    parser.add_argument(
        "--local",
        type=float,
        metavar="SECONDS",
        help="render: start the services and a Prometheus, send SECONDS of traffic, render",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = repo_root()
    if args.command == "render":
        from servescope.cli.dashboard_render import capture_local, render_all

        out = root / "docs" / "dashboards"
        if args.local:
            paths = capture_local(out, args.local)
        else:
            logs = root / (args.logs or ".run")
            paths = render_all(
                args.prometheus, out, args.minutes, logs_dir=logs if logs.is_dir() else None
            )
        for path in paths:
            print(f"wrote {path.relative_to(root)}")
        return 0
    stale = []
    for relative, produce in generators(root).items():
        path = root / relative
        content = produce()
        if not path.exists() or path.read_text() != content:
            stale.append(relative)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
    verb = "out of date" if args.check else "written"
    print(f"{verb}: {', '.join(stale)}" if stale else "dashboards are up to date")
    return 1 if args.check and stale else 0
