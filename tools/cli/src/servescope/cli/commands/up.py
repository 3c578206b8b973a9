"""`servescope up`: the services, Prometheus, Alertmanager and the responder, locally, with gentle traffic."""

from __future__ import annotations

import argparse
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from servescope.cli.local.alerting import (
    DEFAULT_ALERTMANAGER_PORT,
    DEFAULT_RESPONDER_PORT,
    AlertmanagerProcess,
    LocalAlerting,
    ResponderProcess,
)
from servescope.cli.local.services import (
    DEFAULT_PORTS,
    PROMETHEUS_INSTALL_HINT,
    LocalStack,
    LocalStackError,
    PrometheusProcess,
    ServiceProcess,
    prometheus_config,
)
from servescope.cli.output import say as _say
from servescope.cli.paths import heldout_dir


def cmd_up(args: argparse.Namespace) -> int:
    ports = {
        "preprocess": args.port_preprocess,
        "classifier": args.port_classifier,
        "postprocess": args.port_postprocess,
    }
    run_dir = Path(args.run_dir)
    # Local mode keeps every trace and every log line: a learner's traffic is small, and the
    # point is to find one slow request and read all of it.
    local_env = {
        name: {
            "SERVESCOPE_TRACE_FILE": str(run_dir / "traces" / f"{name}.jsonl"),
            "SERVESCOPE_TRACE_SAMPLE_RATIO": "1.0",
            "SERVESCOPE_LOG_INFO_SAMPLE_RATIO": "1.0",
        }
        for name in ports
    }
    # The lab's fault switches: a random admin token, readable only by this user, lets
    # `servescope fault` toggle faults at run time; --fault sets one from the start.
    run_dir.mkdir(parents=True, exist_ok=True)
    token_file = run_dir / "admin-token"
    token_file.write_text(secrets.token_urlsafe(24))
    token_file.chmod(0o600)
    for name in ports:
        local_env[name]["SERVESCOPE_ADMIN_TOKEN"] = token_file.read_text()
    for fault in args.fault:
        try:
            service, step, seconds = fault.split(":")
            float(seconds)
        except ValueError:
            _say(
                f"error: --fault {fault!r}: write SERVICE:STEP:SECONDS, e.g. preprocess:resize:0.5"
            )
            return 1
        if service not in local_env:
            _say(f"error: --fault {fault!r}: no service {service!r}")
            return 1
        local_env[service]["SERVESCOPE_FAULT_STAGE"] = step
        local_env[service]["SERVESCOPE_FAULT_DELAY_SECONDS"] = seconds
    stack = LocalStack(ports=ports, run_dir=run_dir, env=local_env)
    try:
        stack.check_ports()
    except LocalStackError as exc:
        _say(f"error: {exc}")
        return 1
    # Fresh logs for each run, so what a learner reads is this run's story.
    for old in [*run_dir.glob("*.log"), *run_dir.glob("traces/*.jsonl")]:
        old.unlink()
    _say(f"starting classifier, postprocess and preprocess (logs in {args.run_dir}/) ...")
    started = time.monotonic()
    try:
        stack.start(timeout=args.timeout)
    except LocalStackError as exc:
        _say(f"error: {exc}")
        return 1
    _say(f"all three services ready in {time.monotonic() - started:.1f} s")
    prometheus: PrometheusProcess | None = None
    alerting: LocalAlerting | None = None
    if args.prometheus and PrometheusProcess.available():
        if args.alertmanager:
            # Alertmanager and its responder first, so Prometheus finds them ready.
            alerting = LocalAlerting(
                run_dir,
                prometheus_url=f"http://127.0.0.1:{args.port_prometheus}",
                alertmanager_port=args.port_alertmanager,
                responder_port=args.port_responder,
            )
            try:
                alerting.start()
            except LocalStackError as exc:
                _say(f"warning: {exc}; continuing without Alertmanager")
                alerting = None
        config = prometheus_config(
            ports,
            args.port_prometheus,
            alertmanager_port=alerting.alertmanager_port if alerting else None,
        )
        if alerting is None:
            config.pop("alerting", None)
        prometheus = PrometheusProcess(args.port_prometheus, run_dir, config)
        try:
            prometheus.start()
        except LocalStackError as exc:
            _say(f"warning: {exc}; continuing without Prometheus")
            prometheus = None
            if alerting:
                alerting.stop()
                alerting = None
    loadgen: subprocess.Popen[bytes] | None = None
    if args.rate > 0:
        log = (Path(args.run_dir) / "loadgen.log").open("ab")
        loadgen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "servescope.loadgen",
                "--heldout-dir",
                str(heldout_dir()),
                "--url",
                stack.url,
                "--rate",
                str(args.rate),
                "--duration",
                "0",
                "--mix",
                "mixed",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
    rows = [
        ("predict", f"POST {stack.url}/v1/predict  (image/png, image/jpeg or a form upload)"),
        ("classifier", f"{stack.services['classifier'].url}/v2/models/digits-cnn  (OIP v2)"),
        ("postprocess", f"{stack.services['postprocess'].url}/v1/postprocess"),
        ("metrics", ", ".join(f"{s.url}/metrics" for s in stack.services.values())),
    ]
    if prometheus:
        rows.append(("prometheus", f"{prometheus.url}  (scrapes every 5 s, exemplars on)"))
    elif args.prometheus:
        rows.append(("prometheus", f"not started. {PROMETHEUS_INSTALL_HINT}"))
    if alerting and alerting.alertmanager and alerting.responder:
        rows.append(
            (
                "alerts",
                f"{alerting.alertmanager.url}  (Alertmanager; incident notes in "
                f"{alerting.responder.incidents_path}/)",
            )
        )
    rows.append(("traces", f"{run_dir}/traces/  (servescope trace --slowest 3)"))
    rows.append(("logs", f"{run_dir}/<service>.log  (JSON lines; grep a trace id)"))
    if loadgen:
        rows.append(
            ("traffic", f"{args.rate:g}/s digits with 10% bad inputs ({run_dir}/loadgen.log)")
        )
    _say("")
    for label, value in rows:
        _say(f"  {label:<12}{value}")
    _say("")
    _say(
        "try:  uv run servescope predict services/classifier/model/heldout/0000_7.png"
        + ("" if stack.url.endswith(":8000") else f" --url {stack.url}")
    )
    custom = (
        ""
        if ports["preprocess"] == DEFAULT_PORTS["preprocess"]
        else f" --port {ports['preprocess']}"
    )
    _say(
        f"      uv run servescope fault preprocess resize 0.5{custom}"
        "   (then: uv run servescope trace --slowest 1)"
    )
    _say("Ctrl-C stops everything.")

    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    exit_code = 0
    while not stopping:
        time.sleep(0.2)
        dead: list[ServiceProcess | PrometheusProcess | AlertmanagerProcess | ResponderProcess] = [
            s for s in stack.services.values() if not s.running()
        ]
        if alerting:
            dead += [p for p in alerting.processes() if not p.running()]
        if prometheus and not prometheus.running():
            dead.append(prometheus)
        if dead:
            for proc in dead:
                code = proc.process.returncode if proc.process else "?"
                name = getattr(proc, "name", "prometheus")
                _say(f"error: {name} exited (code {code}); see {proc.log_path}")
            exit_code = 1
            break
    _say("stopping ...")
    if loadgen and loadgen.poll() is None:
        loadgen.send_signal(signal.SIGTERM)
        try:
            loadgen.wait(5)
        except subprocess.TimeoutExpired:
            loadgen.kill()
    codes = stack.stop()
    if prometheus:
        codes["prometheus"] = prometheus.stop()
    if alerting:
        codes.update(alerting.stop())
    _say("stopped: " + ", ".join(f"{name} exit {code}" for name, code in codes.items()))
    return exit_code


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = sub.add_parser("up", help="run the three services locally with gentle traffic")
    up.add_argument("--port-preprocess", type=int, default=DEFAULT_PORTS["preprocess"])
    up.add_argument("--port-classifier", type=int, default=DEFAULT_PORTS["classifier"])
    up.add_argument("--port-postprocess", type=int, default=DEFAULT_PORTS["postprocess"])
    up.add_argument("--port-prometheus", type=int, default=9090)
    up.add_argument(
        "--no-prometheus", dest="prometheus", action="store_false", help="do not start Prometheus"
    )
    up.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SERVICE:STEP:SECONDS",
        help="start with a slow step, e.g. preprocess:resize:0.5 (repeatable)",
    )
    up.add_argument("--port-alertmanager", type=int, default=DEFAULT_ALERTMANAGER_PORT)
    up.add_argument("--port-responder", type=int, default=DEFAULT_RESPONDER_PORT)
    up.add_argument(
        "--no-alertmanager",
        dest="alertmanager",
        action="store_false",
        help="do not start Alertmanager and the responder",
    )
    up.add_argument("--rate", type=float, default=2.0, help="traffic per second; 0 for none")
    up.add_argument("--run-dir", default=".run", help="where process logs go")
    up.add_argument("--timeout", type=float, default=60.0, help="readiness wait, seconds")
    up.set_defaults(func=cmd_up)
