"""The cost profile on live services: two real Prometheus servers scrape the same services at
once under the same traffic, one keeping everything and one with the cost profile
(deploy/prometheus/cost-profile.yml). The second keeps fewer samples per scrape, refuses no
scrape, and every selector of every rule, SLO, dashboard, runbook and responder query matches
as many series in it as in the first."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from servescope.cli import promql, relabel
from servescope.cli.local.services import PrometheusProcess, free_port, prometheus_config
from servescope.cli.paths import heldout_dir, repo_root
from servescope.loadgen.traffic import LoadConfig, run_load
from servescope.telemetry.contract import load_contract

from ..deploy.test_cost_profile import responder_queries

pytestmark = pytest.mark.slow

JOBS = 'job=~"preprocess|classifier|postprocess"'


def _query(prometheus: PrometheusProcess, expr: str) -> list[dict]:
    response = httpx.get(prometheus.url + "/api/v1/query", params={"query": expr}, timeout=10)
    response.raise_for_status()
    result: list[dict] = response.json()["data"]["result"]
    return result


def _total(prometheus: PrometheusProcess, expr: str) -> float:
    return sum(float(s["value"][1]) for s in _query(prometheus, expr))


@pytest.fixture(scope="module")
def servers(module_stack_starter, tmp_path_factory):
    assert PrometheusProcess.available(), (
        "prometheus is missing: apt-get install prometheus (.ci/run installs it)"
    )
    stack = module_stack_starter()
    started = {}
    try:
        for name, cost_profile in (("kept", False), ("cut", True)):
            port = free_port()
            config = prometheus_config(stack.ports, port, "1s", cost_profile=cost_profile)
            started[name] = PrometheusProcess(port, tmp_path_factory.mktemp(name), config)
            started[name].start()
        for prometheus in started.values():
            prometheus.wait_for_targets()
        config = LoadConfig(
            heldout_dir=heldout_dir(), url=stack.url, rate=60, duration=4, mix="mixed"
        )
        assert asyncio.run(run_load(config, progress=None)).ok > 100
        time.sleep(3)  # scrapes after the traffic in both
        yield started
    finally:
        for prometheus in started.values():
            prometheus.stop()


def test_the_cut_keeps_fewer_samples_and_refuses_no_scrape(servers) -> None:
    kept, cut = servers["kept"], servers["cut"]
    exposed = _total(cut, f"scrape_samples_scraped{{{JOBS}}}")
    assert _total(kept, f"scrape_samples_post_metric_relabeling{{{JOBS}}}") >= exposed * 0.95
    after = _total(cut, f"scrape_samples_post_metric_relabeling{{{JOBS}}}")
    assert after < exposed * 0.85, (exposed, after)
    assert _total(cut, "prometheus_target_scrapes_exceeded_sample_limit_total") == 0
    assert not _query(cut, f"up{{{JOBS}}} == 0")


def test_every_selector_anything_reads_matches_the_same_series_after_the_cut(servers) -> None:
    exposed = set(relabel.exposed(load_contract()))
    readers = relabel.readers(repo_root()) + responder_queries()
    checked, answered, differ = set(), 0, []
    for reader in readers:
        for selector in promql.selectors(reader.expr):
            if selector.metric not in exposed:
                continue
            matchers = [
                f"{label}{op}{json.dumps(value)}"
                for label, op, value in selector.matchers
                if relabel.ANY not in value
            ]
            key = f"{selector.metric}{{{', '.join(matchers)}}}"
            if key in checked:
                continue
            checked.add(key)
            expr = f"count(last_over_time({key}[1m]))"
            counts = [_total(servers[name], expr) for name in ("kept", "cut")]
            answered += counts[0] > 0
            if counts[0] != counts[1]:
                differ.append((key, reader.who, counts))
    assert answered >= 30, f"only {answered} of {len(checked)} selectors had data to compare"
    assert differ == []
