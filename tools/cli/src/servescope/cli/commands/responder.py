"""`servescope responder`: run the alert responder service in the foreground."""

from __future__ import annotations

import argparse
import os
import sys

from servescope.cli.paths import repo_root

# Flag -> the responder's setting (SERVESCOPE_* variables, like every service's; the
# responder's own carry SERVESCOPE_RESPONDER_, see services/responder/.../settings.py).
FLAGS = {
    "host": "SERVESCOPE_HOST",
    "port": "SERVESCOPE_PORT",
    "prometheus_url": "SERVESCOPE_RESPONDER_PROMETHEUS_URL",
    "incident_dir": "SERVESCOPE_RESPONDER_INCIDENT_DIR",
    "window": "SERVESCOPE_RESPONDER_WINDOW",
    "runbook_base_url": "SERVESCOPE_RESPONDER_RUNBOOK_BASE_URL",
    "runbook_dir": "SERVESCOPE_RESPONDER_RUNBOOK_DIR",
    "trace_url_template": "SERVESCOPE_RESPONDER_TRACE_URL_TEMPLATE",
    "query_timeout_seconds": "SERVESCOPE_RESPONDER_QUERY_TIMEOUT_SECONDS",
    "max_traces": "SERVESCOPE_RESPONDER_MAX_TRACES",
    "log_level": "SERVESCOPE_LOG_LEVEL",
}


def environment(args: argparse.Namespace, base: dict[str, str]) -> dict[str, str]:
    """`base` with the given flags as the responder's variables.

    Only the CLI knows where the checkout is: unless set, notes check runbook pages in its
    runbooks/ directory.
    """
    env = dict(base)
    env.update(
        {
            var: str(getattr(args, flag))
            for flag, var in FLAGS.items()
            if getattr(args, flag) is not None
        }
    )
    runbooks = repo_root() / "runbooks"
    if FLAGS["runbook_dir"] not in env and runbooks.is_dir():
        env[FLAGS["runbook_dir"]] = str(runbooks)
    return env


def run(args: argparse.Namespace) -> int:
    env = environment(args, dict(os.environ))
    os.execve(sys.executable, [sys.executable, "-m", "servescope.responder"], env)  # noqa: S606


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "responder",
        help="Alertmanager webhook receiver: diagnoses each alert, writes incident notes",
    )
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 9095)")
    parser.add_argument("--prometheus-url", help="Prometheus to query (default :9090)")
    parser.add_argument("--incident-dir", help="notes go here (default .run/incidents)")
    parser.add_argument("--window", help="range of the diagnostic queries (default 5m)")
    parser.add_argument("--runbook-base-url", help="base for relative runbook_url annotations")
    parser.add_argument(
        "--runbook-dir", help="runbook pages to check links against (default: runbooks/)"
    )
    parser.add_argument("--trace-url-template", help="trace link with {trace_id}, e.g. Jaeger's")
    parser.add_argument(
        "--query-timeout-seconds", type=float, help="longest wait per Prometheus query (5)"
    )
    parser.add_argument("--max-traces", type=int, help="trace ids per note (default 5)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=run)
