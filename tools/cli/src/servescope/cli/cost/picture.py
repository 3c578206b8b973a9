"""The cost dashboard before and after, in one picture: one local run with N models that
switches Prometheus from everything kept to the cost profile halfway (a configuration
reload), drawn by the dashboard renderer, so the by-job, by-metric and by-model panels drop
where the cuts begin. Written to docs/dashboards/servescope-cost.png by
`servescope cost --dashboard-picture`.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from servescope.cli.cost.observe import SpanCounter
from servescope.cli.cost.run import Plan, session_for
from servescope.cli.dashboard_render import Renderer
from servescope.cli.local.services import prometheus_config
from servescope.cli.paths import repo_root
from servescope.dashboards import OUTPUT_DIR

DASHBOARD = "servescope-cost"


def draw(plan: Plan, out: Path, seconds: float) -> Path:
    """`seconds` with everything kept, `seconds` with the cost profile, then the picture."""
    run_dir = plan.run_dir / "picture"
    plan.started, plan.budget = time.monotonic(), plan.STARTUP + 2 * seconds + 10
    with SpanCounter() as spans:
        session = session_for(plan, run_dir, "kept", plan.models, spans)
        plan.phase(f"dashboard picture: {plan.models} models, everything kept for {seconds:g} s")
        session.start(timeout=120)
        try:
            prometheus = session.prometheus
            if prometheus is None or session.stack is None:
                raise RuntimeError("Prometheus did not start: " + "; ".join(session.notes))
            prometheus.wait_for_targets(timeout=60)
            time.sleep(seconds)
            plan.phase(f"dashboard picture: the cost profile for {seconds:g} s")
            exporter = session.containers.exporter if session.containers else None
            prometheus.config = prometheus_config(
                session.stack.ports,
                prometheus.port,
                exporter_port=exporter.port if exporter else None,
                cost_profile=True,
            )
            prometheus.config.pop("alerting", None)
            prometheus.prepare()  # rewrites its configuration file
            reload = f"{prometheus.url}/-/reload"
            request = urllib.request.Request(reload, method="POST")  # noqa: S310 (loopback)
            with urllib.request.urlopen(request, timeout=30):  # noqa: S310 (loopback)
                pass
            time.sleep(seconds)
            board = json.loads((repo_root() / OUTPUT_DIR / f"{DASHBOARD}.json").read_text())
            renderer = Renderer(prometheus.url, minutes=2 * seconds / 60 + 0.5, logs_dir=run_dir)
            renderer.draw(board, out)
        finally:
            session.stop()
    return out
