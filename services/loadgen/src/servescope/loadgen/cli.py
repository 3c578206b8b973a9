"""The `servescope` command line."""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from servescope.loadgen.alerting import (
    DEFAULT_ALERTMANAGER_PORT,
    DEFAULT_RESPONDER_PORT,
    AlertmanagerProcess,
    LocalAlerting,
    ResponderProcess,
)
from servescope.loadgen.local import (
    DEFAULT_PORTS,
    PROMETHEUS_INSTALL_HINT,
    LocalStack,
    LocalStackError,
    PrometheusProcess,
    ServiceProcess,
    prometheus_config,
)
from servescope.loadgen.responder import add_responder_parser
from servescope.loadgen.slo import add_slo_parser
from servescope.loadgen.stack import add_stack_parser
from servescope.loadgen.traffic import MIXES, LoadConfig, LoadResult, run_load


def _say(message: str) -> None:
    print(message, flush=True)


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
                "load",
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


def cmd_predict(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    failures = 0
    for path in args.images:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            _say(f"{path}: cannot read: {exc.strerror}")
            failures += 1
            continue
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        request = urllib.request.Request(  # noqa: S310 (the user's own URL)
            args.url.rstrip("/") + f"/v1/predict?top_k={args.top_k}",
            data=data,
            headers={"Content-Type": content_type},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=args.timeout) as response:  # noqa: S310
                answer = orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                error = orjson.loads(body)
                _say(f"{path}: {exc.code} {error.get('kind')}: {error.get('error')}")
            except orjson.JSONDecodeError:
                _say(f"{path}: HTTP {exc.code}")
            failures += 1
            continue
        except (urllib.error.URLError, OSError) as exc:
            _say(f"{path}: cannot reach {args.url} ({exc}); is `servescope up` running?")
            failures += 1
            continue
        if args.json:
            _say(orjson.dumps({"file": path, **answer}).decode())
        else:
            others = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in answer["top_k"][1:])
            _say(
                f"{path}: {answer['label']} (confidence {answer['confidence']:.3f}; "
                f"then {others}) [{answer['model_name']} v{answer['model_version']}]"
            )
    return 1 if failures else 0


def cmd_load(args: argparse.Namespace) -> int:
    config = LoadConfig(
        url=args.url,
        rate=args.rate,
        duration=args.duration,
        requests=args.requests,
        concurrency=args.concurrency,
        mix=args.mix,
        bad_fraction=args.bad_fraction,
        seed=args.seed,
    )
    _say(
        f"sending {config.mix} traffic to {config.url} at {config.rate}/s "
        + (f"for {config.duration:g} s" if config.duration else "until Ctrl-C")
        + (f" (at most {config.requests} requests)" if config.requests else "")
    )
    result = LoadResult()
    asyncio.run(_load_until_stopped(config, result))
    _say(result.summary())
    return 0


async def _load_until_stopped(config: LoadConfig, result: LoadResult) -> None:
    """Run the load; SIGINT or SIGTERM ends it early and still leaves a summary."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Set explicitly: a child started from a script may inherit SIGINT as ignored.
        loop.add_signal_handler(sig, task.cancel if task else lambda: None)
    try:
        await run_load(config, sys.stderr, result)
    except asyncio.CancelledError:
        _say("")


def cmd_generate(args: argparse.Namespace) -> int:
    """Regenerate every generated file, or with --check report the ones that drifted."""
    from servescope.loadgen.generate import generate_all

    stale = generate_all(check=args.check)
    if args.check:
        if stale:
            _say("out of date (run `make generate`): " + ", ".join(stale))
            return 1
        _say("generated files are up to date")
        return 0
    _say("written: " + (", ".join(stale) if stale else "nothing changed"))
    return 0


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


def cmd_bench(args: argparse.Namespace) -> int:
    from servescope.loadgen.bench import run_bench

    try:
        report = run_bench(rounds=args.rounds, seconds=args.seconds)
    except RuntimeError as exc:
        _say(f"error: {exc}")
        return 1
    for key, value in report["ratios"].items():
        _say(f"{key}: {value:.2f}")
    _say("written: docs/benchmarks.md, docs/benchmarks.json, docs/benchmarks.png")
    return 0


def cmd_dashboards(args: argparse.Namespace) -> int:
    from servescope.loadgen.dashboards.__main__ import main as dashboards_main

    return dashboards_main(args.rest)


def cmd_trace(args: argparse.Namespace) -> int:
    from servescope.loadgen.traces import load_spans, render, slowest_traces

    directory = Path(args.dir)
    traces = load_spans(directory)
    if not traces:
        _say(
            f"no spans in {directory}/; run `servescope up` (it records traces there) and send "
            "some requests, or point --dir at another span directory"
        )
        return 1
    if args.trace_id:
        wanted = args.trace_id.lower()
        matches = [t for t in traces if t.startswith(wanted)]
        if len(matches) != 1:
            _say(f"{'no' if not matches else 'several'} traces match {args.trace_id!r}")
            return 1
        chosen = matches
    else:
        chosen = slowest_traces(traces, args.slowest or 1)
    _say("\n\n".join(render(trace_id, traces[trace_id]) for trace_id in chosen))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servescope", description="Observe ONNX model serving, locally or on Kubernetes."
    )
    sub = parser.add_subparsers(dest="command", required=True)

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

    predict = sub.add_parser("predict", help="classify image files through the running stack")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--url", default=f"http://127.0.0.1:{DEFAULT_PORTS['preprocess']}")
    predict.add_argument("--top-k", type=int, default=3)
    predict.add_argument("--timeout", type=float, default=10.0)
    predict.add_argument("--json", action="store_true", help="print the raw JSON answers")
    predict.set_defaults(func=cmd_predict)

    load = sub.add_parser("load", help="send traffic: normal digits, bad inputs, or a mix")
    load.add_argument("--url", default=f"http://127.0.0.1:{DEFAULT_PORTS['preprocess']}")
    load.add_argument("--rate", type=float, default=5.0, help="requests per second")
    load.add_argument("--duration", type=float, default=10.0, help="seconds; 0 = until Ctrl-C")
    load.add_argument("--requests", type=int, default=0, help="stop after this many; 0 = no cap")
    load.add_argument("--concurrency", type=int, default=8, help="most requests in flight")
    load.add_argument(
        "--mix", choices=MIXES, default="normal", help="drift: inverted, noisy, rotated digits"
    )
    load.add_argument("--bad-fraction", type=float, default=0.1, help="bad share in --mix mixed")
    load.add_argument("--seed", type=int, default=0)
    load.set_defaults(func=cmd_load)
    add_stack_parser(sub)
    add_slo_parser(sub)
    add_responder_parser(sub)

    fault = sub.add_parser("fault", help="slow down one step of a running local service")
    fault.add_argument("service", choices=sorted(DEFAULT_PORTS))
    fault.add_argument(
        "step",
        help="preprocess: decode, resize, normalise; classifier: inference; postprocess: softmax",
    )
    fault.add_argument("seconds", type=float, help="extra delay; 0 turns the fault off")
    fault.add_argument("--port", type=int, help="the service's port if not the default")
    fault.add_argument("--token-file", default=".run/admin-token")
    fault.set_defaults(func=cmd_fault)

    bench = sub.add_parser("bench", help="measure what telemetry costs (writes docs/benchmarks.md)")
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    bench.set_defaults(func=cmd_bench)

    trace = sub.add_parser("trace", help="print a trace waterfall from local mode's spans")
    trace.add_argument("trace_id", nargs="?", help="a trace id (or a unique prefix of one)")
    trace.add_argument("--slowest", type=int, help="the N slowest traces instead")
    trace.add_argument("--dir", default=".run/traces", help="where local mode writes spans")
    trace.set_defaults(func=cmd_trace)

    dashboards = sub.add_parser(
        "dashboards",
        help="write dashboards/*.json, or `render` pictures of them from real data",
        add_help=False,
    )
    dashboards.add_argument("rest", nargs=argparse.REMAINDER)
    dashboards.set_defaults(func=cmd_dashboards)

    generate = sub.add_parser(
        "generate", help="regenerate generated files (docs/telemetry.md, ...)"
    )
    generate.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is out of date"
    )
    generate.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dashboards"]:
        # Its own parser (generate, --check, render ...) takes the rest as it is.
        return cmd_dashboards(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
