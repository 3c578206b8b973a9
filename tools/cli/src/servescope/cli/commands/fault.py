"""`servescope fault SERVICE STEP SECONDS`: slow one step of a running local service."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from servescope.cli.local.services import DEFAULT_PORTS
from servescope.cli.output import say as _say
from servescope.telemetry.pipeline import PIPELINE


def cmd_fault(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    try:
        token = Path(args.token_file).read_text().strip()
    except OSError:
        _say(f"no admin token at {args.token_file}; is `servescope up` running from here?")
        return 1
    port = DEFAULT_PORTS[args.service] if args.port is None else args.port
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/faults/{args.step}",
        data=orjson.dumps({"delay_seconds": args.seconds}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="PUT",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            answer = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        _say(f"{args.service}: {exc.code} {orjson.loads(exc.read()).get('error')}")
        return 1
    except (urllib.error.URLError, OSError) as exc:
        _say(f"cannot reach {args.service} on port {port} ({exc}); is `servescope up` running?")
        return 1
    _say(f"{args.service} faults now: {answer['delays'] or 'none'}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fault = sub.add_parser("fault", help="slow down one step of a running local service")
    fault.add_argument("service", choices=sorted(DEFAULT_PORTS))
    fault.add_argument(
        "step",
        help="; ".join(
            f"{service}: {', '.join(PIPELINE.fault_steps(service))}"
            for service in PIPELINE.service_names
            if PIPELINE.fault_steps(service)
        ),
    )
    fault.add_argument("seconds", type=float, help="extra delay; 0 turns the fault off")
    fault.add_argument("--port", type=int, help="the service's port if not the default")
    fault.add_argument("--token-file", default=".run/admin-token")
    fault.set_defaults(func=cmd_fault)
