"""The services, a real Prometheus (scrape and rule evaluation every second, with
deploy/prometheus/rules) and mixed traffic: every query of the Service overview, Model and
SLO dashboards returns data."""

from __future__ import annotations

import asyncio
import time

import pytest

from servescope.cli.local.services import PrometheusProcess, free_port, prometheus_config
from servescope.cli.paths import heldout_dir
from servescope.dashboards import DASHBOARDS
from servescope.loadgen.traffic import LoadConfig, run_load

from .promql import load, prometheus_query, queries, substitute, variable_queries

pytestmark = pytest.mark.slow

LIVE = ("servescope-overview", "servescope-model", "servescope-slos")


@pytest.fixture(scope="module")
def prometheus(module_stack_starter, tmp_path_factory):
    if not PrometheusProcess.available():
        pytest.skip("prometheus is missing: apt-get install prometheus (.ci/run installs it)")
    stack = module_stack_starter()
    port = free_port()
    process = PrometheusProcess(
        port, tmp_path_factory.mktemp("prometheus"), prometheus_config(stack.ports, port, "1s")
    )
    process.start()
    try:
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


@pytest.mark.parametrize("name", LIVE)
def test_every_query_returns_data(prometheus, name: str) -> None:
    board = load(name)
    empty = []
    for title, expr in queries(board) + variable_queries(board):
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
