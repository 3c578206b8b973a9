"""`servescope up`: the services, Prometheus, Alertmanager and the responder, locally, with gentle traffic."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from servescope.cli.local.alerting import DEFAULT_ALERTMANAGER_PORT, DEFAULT_RESPONDER_PORT
from servescope.cli.local.cgroups import Limits, parse_limit_spec
from servescope.cli.local.process import LocalStackError
from servescope.cli.local.services import DEFAULT_PORTS
from servescope.cli.local.session import (
    DEFAULT_EXPORTER_PORT,
    DEFAULT_PROMETHEUS_PORT,
    LocalSession,
    ensure_model_repository,
    parse_fault,
)
from servescope.cli.local.viewers import DEFAULT_GRAFANA_PORT
from servescope.cli.output import say


def cmd_up(args: argparse.Namespace) -> int:
    session = LocalSession(
        run_dir=Path(args.run_dir),
        ports={
            "preprocess": args.port_preprocess,
            "classifier": args.port_classifier,
            "postprocess": args.port_postprocess,
        },
        prometheus_port=args.port_prometheus if args.prometheus else None,
        alertmanager_port=args.port_alertmanager if args.alertmanager else None,
        responder_port=args.port_responder,
        rate=args.rate,
        faults=args.fault,
        exporter_port=args.port_exporter,
        grafana_port=args.port_grafana if args.grafana else None,
        jaeger=args.jaeger,
        model_repository=args.model_repository,
    )
    # A SIGTERM while starting must still stop what has started (start() cleans up on any
    # exception), so it interrupts like Ctrl-C until the steady-state handler takes over.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for spec in args.fault:
            parse_fault(spec)
        session.limits = parse_limits(args.limit)
        if args.models is not None:
            session.model_repository = ensure_model_repository(args.models, say=say)
        say(f"starting classifier, postprocess and preprocess (logs in {args.run_dir}/) ...")
        started = time.monotonic()
        session.start(timeout=args.timeout)
    except (ValueError, LocalStackError) as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted while starting; everything started was stopped")
        return 130
    say(f"ready in {time.monotonic() - started:.1f} s")
    for note in session.notes:
        say(f"note: {note}")
    say("")
    for label, value in summary(session, args):
        say(f"  {label:<12}{value}")
    say("")
    say(
        "try:  uv run servescope predict services/classifier/model/heldout/0000_7.png"
        + _url(session)
    )
    say(
        f"      uv run servescope fault preprocess delay resize 0.5{_port(session)}"
        "   (then: uv run servescope trace --slowest 1)"
    )
    say("      uv run servescope lab list   (hands-on labs, graded)")
    say("Ctrl-C stops everything.")
    exit_code = wait_for_signal_or_death(session)
    say("stopping ...")
    codes = session.stop()
    say("stopped: " + ", ".join(f"{name} exit {code}" for name, code in codes.items()))
    return exit_code


def parse_limits(specs: list[str]) -> dict[str, Limits]:
    """--limit SERVICE=memory:256Mi,cpu:500m (repeatable) -> limits per service."""
    limits: dict[str, Limits] = {}
    for spec in specs:
        service, parsed = parse_limit_spec(spec, tuple(DEFAULT_PORTS))
        before = limits.get(service, Limits())
        limits[service] = Limits(
            parsed.memory_bytes if parsed.memory_bytes is not None else before.memory_bytes,
            parsed.cpu_millicores if parsed.cpu_millicores is not None else before.cpu_millicores,
        )
    return limits


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def summary(session: LocalSession, args: argparse.Namespace) -> list[tuple[str, str]]:
    """One aligned line per thing running, with where to find it."""
    assert session.stack is not None
    services = session.stack.services
    rows = [
        (
            "predict",
            f"POST {session.stack.url}/v1/predict  (image/png, image/jpeg or a form upload)",
        ),
        ("classifier", f"{services['classifier'].url}/v2/models/digits-cnn  (OIP v2)"),
        *_models_row(session),
        ("postprocess", f"{services['postprocess'].url}/v1/postprocess"),
        ("metrics", ", ".join(f"{s.url}/metrics" for s in services.values())),
    ]
    if session.prometheus:
        rows.append(("prometheus", f"{session.prometheus.url}  (scrapes every 5 s, exemplars on)"))
    alerting = session.alerting
    if alerting and alerting.alertmanager and alerting.responder:
        rows.append(
            (
                "alerts",
                f"{alerting.alertmanager.url}  (Alertmanager; incident notes in "
                f"{alerting.responder.incidents_path}/)",
            )
        )
    rows += session.viewers.summary() if session.viewers else []  # Grafana, Jaeger
    containers = session.containers
    if containers and containers.driver:
        limited = ", ".join(
            f"{name} {session.limits[name].describe()}"
            for name in containers.cgroups
            if name in session.limits
        )
        rows.append(
            (
                "resources",
                f"{limited or 'no limits'}  ({containers.driver.describe()}; restarts with "
                "back-off)",
            )
        )
    if containers and containers.exporter:
        rows.append(
            (
                "containers",
                f"{containers.exporter.url}/metrics/cadvisor, /metrics/kube-state-metrics",
            )
        )
    rows.append(("traces", f"{args.run_dir}/traces/  (servescope trace --slowest 3)"))
    rows.append(("logs", f"{args.run_dir}/<service>.log  (JSON lines; grep a trace id)"))
    if session.traffic:
        spread = " over the models (Zipf popularity)" if session.model_repository else ""
        rows.append(
            (
                "traffic",
                f"{args.rate:g}/s digits with 10% bad inputs{spread} ({args.run_dir}/loadgen.log)",
            )
        )
    return rows


def _models_row(session: LocalSession) -> list[tuple[str, str]]:
    repository = session.model_repository
    if repository is None or session.stack is None:
        return []
    count = len(list(repository.glob("*/model-card.json")))
    return [
        (
            "models",
            f"POST {session.stack.url}/v1/models/NAME/predict  ({count} models of {repository})",
        )
    ]


def _url(session: LocalSession) -> str:
    assert session.stack is not None
    return "" if session.stack.url.endswith(":8000") else f" --url {session.stack.url}"


def _port(session: LocalSession) -> str:
    edge = session.ports["preprocess"]
    return "" if edge == DEFAULT_PORTS["preprocess"] else f" --port {edge}"


def wait_for_signal_or_death(session: LocalSession) -> int:
    """Until Ctrl-C or SIGTERM (0), or until a process dies (1, saying which)."""
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stopping:
        time.sleep(0.2)
        dead = session.dead()
        if dead:
            for process in dead:
                say(
                    f"error: {process.name} exited (code {process.exit_code()}); see {process.log_path}"
                )
            return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="run the three services locally with gentle traffic")
    up.add_argument("--port-preprocess", type=int, default=DEFAULT_PORTS["preprocess"])
    up.add_argument("--port-classifier", type=int, default=DEFAULT_PORTS["classifier"])
    up.add_argument("--port-postprocess", type=int, default=DEFAULT_PORTS["postprocess"])
    up.add_argument("--port-prometheus", type=int, default=DEFAULT_PROMETHEUS_PORT)
    up.add_argument(
        "--no-prometheus", dest="prometheus", action="store_false", help="do not start Prometheus"
    )
    up.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SERVICE:KIND[:STEP][:VALUE]",
        help="start with a fault (repeatable), e.g. preprocess:delay:resize:0.5, "
        "classifier:error:infer:0.2, classifier:cache:infer:4Mi, postprocess:crash:100, "
        "classifier:slow_start:20; kinds: delay, error, cpu, leak, cache, crash, unready, "
        "slow_start (`servescope fault --help`); SERVICE:STEP:SECONDS is a delay",
    )
    up.add_argument("--port-alertmanager", type=int, default=DEFAULT_ALERTMANAGER_PORT)
    up.add_argument("--port-responder", type=int, default=DEFAULT_RESPONDER_PORT)
    up.add_argument(
        "--no-alertmanager",
        dest="alertmanager",
        action="store_false",
        help="do not start Alertmanager and the responder",
    )
    up.add_argument("--port-grafana", type=int, default=DEFAULT_GRAFANA_PORT)
    up.add_argument("--no-grafana", dest="grafana", action="store_false", help="no Grafana")
    up.add_argument("--no-jaeger", dest="jaeger", action="store_false", help="no Jaeger")
    up.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="SERVICE=memory:QTY,cpu:QTY",
        help="run a service in a memory and CPU cgroup, e.g. classifier=memory:256Mi,cpu:500m "
        "(repeatable; Linux with writable cgroups, else one notice and no limits)",
    )
    up.add_argument(
        "--port-exporter",
        type=int,
        default=DEFAULT_EXPORTER_PORT,
        help="local cAdvisor and kube-state-metrics series",
    )
    models = up.add_mutually_exclusive_group()
    models.add_argument(
        "--model-repository",
        type=Path,
        metavar="DIR",
        help="also serve every model of this model repository (`servescope models build`), "
        "each at /v1/models/NAME/predict; the traffic spreads over them",
    )
    models.add_argument(
        "--models",
        type=int,
        metavar="N",
        help="serve N models: the repository in build/models, built first (seconds) when it "
        "does not hold N",
    )
    up.add_argument("--rate", type=float, default=2.0, help="traffic per second; 0 for none")
    up.add_argument("--run-dir", default=".run", help="where process logs go")
    up.add_argument("--timeout", type=float, default=60.0, help="readiness wait, seconds")
    up.set_defaults(func=cmd_up)
