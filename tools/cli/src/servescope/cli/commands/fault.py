"""`servescope fault SERVICE KIND [STEP] [VALUE]`: break a running local service on purpose.

    servescope fault preprocess delay resize 0.5     # every prediction 0.5 s slower
    servescope fault classifier error infer 0.2      # a fifth of inferences fail (500)
    servescope fault classifier cache infer 4Mi      # tmpfs page cache grows, RSS does not
    servescope fault postprocess crash 100           # exit 1 after 100 more requests
    servescope fault classifier unready              # /readyz 503, /healthz 200
    servescope fault preprocess delay resize 0       # one fault off (value 0)
    servescope fault classifier --clear              # every fault of one service off
    servescope fault --clear                         # every fault of every service off
    servescope fault classifier                      # what is on, and the valid specs

The older `servescope fault SERVICE STEP SECONDS` still means a delay. Kinds, units and
bounds: servescope.telemetry.faultspec; `slow_start` acts at start only
(`servescope up --fault classifier:slow_start:20`).
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from servescope.cli.local.services import DEFAULT_PORTS
from servescope.cli.output import say as _say
from servescope.telemetry.faultspec import KINDS, FaultSpecError, parse, usage
from servescope.telemetry.pipeline import PIPELINE


class AdminError(Exception):
    pass


def _admin(port: int, token: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=orjson.dumps(body) if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            answer: dict[str, Any] = orjson.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read()).get("error")
        except orjson.JSONDecodeError:
            message = exc.reason
        raise AdminError(f"{exc.code} {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise AdminError(
            f"cannot reach it on port {port} ({exc}); is `servescope up` running?"
        ) from None


def _describe(answer: dict[str, Any]) -> str:
    faults = [f["spec"] for f in answer.get("faults", [])]
    return ", ".join(faults) if faults else "none"


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False


def cmd_fault(args: argparse.Namespace) -> int:
    try:
        token = Path(args.token_file).read_text().strip()
    except OSError:
        _say(f"no admin token at {args.token_file}; is `servescope up` running from here?")
        return 1
    if args.clear:
        if args.spec:
            _say("--clear takes no KIND, STEP or VALUE: it clears every fault")
            return 2
        names = [args.service] if args.service else sorted(DEFAULT_PORTS)
        failed = 0
        for name in names:
            port = args.port if args.port is not None and args.service else DEFAULT_PORTS[name]
            try:
                _admin(port, token, "DELETE", "/admin/faults")
            except AdminError as exc:
                _say(f"{name}: {exc}")
                failed += 1
                continue
            _say(f"{name} faults now: none")
        return 1 if failed else 0
    if not args.service:
        _say("name a SERVICE (then KIND [STEP] [VALUE]), or --clear for every service")
        return 2
    service = args.service
    port = DEFAULT_PORTS[service] if args.port is None else args.port
    steps = PIPELINE.fault_steps(service)
    parts = list(args.spec)
    try:
        if not parts:
            answer = _admin(port, token, "GET", "/admin/faults")
            _say(f"{service} faults now: {_describe(answer)}")
            _say(usage(steps))
            return 0
        if len(parts) == 2 and parts[0] in steps and parts[0] not in KINDS:
            parts.insert(0, "delay")  # the older SERVICE STEP SECONDS
        if len(parts) >= 2 and _is_zero(parts[-1]) and parts[0] in KINDS:
            query = f"?kind={parts[0]}" + (f"&step={parts[1]}" if len(parts) == 3 else "")
            answer = _admin(port, token, "DELETE", "/admin/faults" + query)
        else:
            spec = parse(":".join(parts), steps)
            if not KINDS[spec.kind].runtime:
                _say(
                    f"{spec.kind} acts at start only: uv run servescope up --fault {service}:{spec}"
                )
                return 2
            answer = _admin(port, token, "PUT", "/admin/faults", {"spec": str(spec)})
    except FaultSpecError as exc:
        _say(f"{service}: {exc}")
        if "valid specs" not in str(exc):
            _say(usage(steps))
        return 2
    except AdminError as exc:
        _say(f"{service}: {exc}")
        return 1
    _say(f"{service} faults now: {_describe(answer)}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kinds = "; ".join(f"{k.usage}: {k.meaning}" for k in KINDS.values())
    steps = "; ".join(
        f"{service}: {', '.join(PIPELINE.fault_steps(service))}"
        for service in PIPELINE.service_names
        if PIPELINE.fault_steps(service)
    )
    fault = sub.add_parser(
        "fault",
        help="break a running local service on purpose (delay, error, cpu, leak, cache, ...)",
        description=f"Kinds: {kinds}. Steps: {steps}. A VALUE of 0 turns one fault off; "
        "SERVICE STEP SECONDS (the older form) is a delay.",
    )
    fault.add_argument("service", nargs="?", choices=sorted(DEFAULT_PORTS))
    fault.add_argument(
        "spec", nargs="*", metavar="KIND [STEP] [VALUE]", help=f"kinds: {', '.join(KINDS)}"
    )
    fault.add_argument(
        "--clear", action="store_true", help="every fault off (of SERVICE, else of all)"
    )
    fault.add_argument("--port", type=int, help="the service's port if not the default")
    fault.add_argument("--token-file", default=".run/admin-token")
    fault.set_defaults(func=cmd_fault)
