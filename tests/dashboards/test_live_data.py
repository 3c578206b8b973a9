"""The services, a real Prometheus (scrape and rule evaluation every second, with
deploy/prometheus/rules) and mixed traffic: every query of the Service overview, Model and
SLO dashboards returns data, and so does every query of the Pods dashboard: the services run
in cgroups (preprocess with memory and CPU limits) under local mode's supervisor, and its
exporter publishes the cAdvisor and kube-state-metrics series. Only the HPA panel stays
empty: local mode has no HorizontalPodAutoscaler."""

from __future__ import annotations

import asyncio
import time

import pytest

from servescope.cli.local.cgroups import Limits
from servescope.cli.local.containers import ContainerRuntime
from servescope.cli.local.services import PrometheusProcess, free_port, prometheus_config
from servescope.cli.paths import heldout_dir
from servescope.dashboards import DASHBOARDS
from servescope.loadgen.traffic import LoadConfig, run_load

from .promql import load, prometheus_query, queries, substitute, variable_queries

pytestmark = pytest.mark.slow

LIVE = ("servescope-overview", "servescope-model", "servescope-slos", "servescope-pods")
# Panels with no local source at all (kube-state-metrics' HPA series need a cluster).
NOT_LOCAL = {"servescope-pods": {"HPA replicas"}}
MiB = 1 << 20


@pytest.fixture(scope="module")
def prometheus(module_stack_starter, tmp_path_factory):
    if not PrometheusProcess.available():
        pytest.skip("prometheus is missing: apt-get install prometheus (.ci/run installs it)")
    stack = module_stack_starter.unstarted()
    # What `servescope up --limit preprocess=memory:128Mi,cpu:300m` does (the dashboard
    # test's $container is preprocess); the other services are accounted, not limited.
    runtime = ContainerRuntime(
        stack.services, limits={"preprocess": Limits(128 * MiB, 300)}, say=lambda _: None
    )
    runtime.prepare()
    stack.start(timeout=60)
    runtime.start(exporter_port=0)
    port = free_port()
    process = PrometheusProcess(
        port,
        tmp_path_factory.mktemp("prometheus"),
        prometheus_config(
            stack.ports,
            port,
            "1s",
            exporter_port=runtime.exporter.port if runtime.exporter else None,
        ),
    )
    process.runtime = runtime
    try:
        process.start()
        process.wait_for_targets()
        # Mixed traffic: clean digits plus 20% bad inputs, so rejections and 4xx exist too.
        config = LoadConfig(
            heldout_dir=heldout_dir(),
            url=stack.url,
            rate=60,
            duration=4,
            mix="mixed",
            bad_fraction=0.2,
        )
        result = asyncio.run(run_load(config, progress=None))
        assert result.ok > 100, result.summary()
        # A few more scrapes and rule evaluations, so every rate() has two points after the
        # traffic and the SLO rules (recorded from recorded rates) have caught up.
        time.sleep(4)
        yield process
    finally:
        process.stop()
        runtime.stop_supervising()
        stack.stop(timeout=10)
        runtime.close()


@pytest.mark.parametrize("name", LIVE)
def test_every_query_returns_data(prometheus, name: str) -> None:
    if name == "servescope-pods" and prometheus.runtime.driver is None:
        pytest.skip(f"no cgroups here, so no container series: {prometheus.runtime.notice}")
    board = load(name)
    empty = []
    skipped = NOT_LOCAL.get(name, set())
    for title, expr in queries(board) + variable_queries(board):
        if title in skipped:
            continue
        body = prometheus_query(prometheus.url, substitute(expr))
        assert body["status"] == "success", (title, expr, body)
        if not body["data"]["result"]:
            empty.append(f"{title}: {expr}")
    assert not empty, "no data:\n" + "\n".join(empty)


def test_the_renderer_draws_every_dashboard(prometheus, tmp_path) -> None:
    from servescope.cli.dashboard_render import render_all

    paths = render_all(prometheus.url, tmp_path, minutes=1)
    assert [p.name for p in paths] == [f"{name}.png" for name in DASHBOARDS]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
