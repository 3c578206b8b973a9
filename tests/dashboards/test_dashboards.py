"""The committed dashboards: fresh from their code, valid PromQL by Prometheus's own parser,
only declared metric names, a unit and a description on every panel (a description only on
logs panels: log lines have no unit), the datasource a variable, exemplars on latency
panels, LogQL on the Loki variable for logs panels (never sent to Prometheus)."""

from __future__ import annotations

import re

import pytest

from servescope.cli.generate import generate_all, generators
from servescope.cli.local.services import PrometheusProcess, free_port
from servescope.cli.paths import repo_root
from servescope.dashboards import DASHBOARDS, OUTPUT_DIR
from servescope.dashboards import generators as dashboard_generators
from servescope.dashboards.common import EXTERNAL_SERIES
from servescope.telemetry.contract import load_contract

from .promql import (
    dashboards,
    is_loki,
    log_queries,
    metric_names,
    panels,
    prometheus_query,
    queries,
    recording_rules,
    substitute,
    variable_queries,
)

ALL = dashboards()


def test_every_dashboard_is_a_registered_generated_file() -> None:
    expected = {f"{OUTPUT_DIR}/{name}.json" for name in DASHBOARDS}
    assert set(dashboard_generators(repo_root())) == expected
    assert expected <= set(generators(repo_root()))


def test_committed_json_equals_a_fresh_generation() -> None:
    stale = [path for path in generate_all(check=True) if path.startswith(f"{OUTPUT_DIR}/")]
    assert stale == [], "run `make dashboards` and commit the result"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_has_a_unit_and_a_description(name: str) -> None:
    board = ALL[name]
    assert board["uid"] == name and board["title"].startswith("Servescope / ")
    for panel in panels(board):
        assert panel.get("description", "").strip(), f"{name}: {panel['title']} has no description"
        if panel["type"] != "logs":
            unit = panel["fieldConfig"]["defaults"].get("unit")
            assert unit, f"{name}: {panel['title']} has no unit"
        assert panel.get("targets"), f"{name}: {panel['title']} has no query"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_the_datasource_is_a_variable(name: str) -> None:
    board = ALL[name]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["jaeger"]["query"] == "jaeger"
    for panel in panels(board):
        refs = [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
        expected = (
            {"type": "loki", "uid": "${loki}"}
            if panel["type"] == "logs"
            else {"type": "prometheus", "uid": "${datasource}"}
        )
        assert all(ref == expected for ref in refs), panel
    assert any("${jaeger}" in link["url"] for link in board["links"])
    # The Loki variable exactly where a logs panel reads it.
    has_logs = any(panel["type"] == "logs" for panel in panels(board))
    assert ("loki" in variables) == has_logs
    if has_logs:
        assert variables["loki"]["type"] == "datasource"
        assert variables["loki"]["query"] == "loki"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_latency_panels_show_exemplars(name: str) -> None:
    for panel in panels(ALL[name]):
        for target in panel["targets"]:
            expr = target["expr"]
            if "duration_seconds_bucket" in expr and "histogram_quantile" in expr:
                assert target.get("exemplar") is True, f"{name}: {panel['title']}"


# A LogQL log query: a stream selector of label matchers, then a pipeline.
STREAM_SELECTOR = re.compile(
    r'\{\s*\w+\s*(=|=~|!=|!~)\s*"[^"]*"(\s*,\s*\w+\s*(=|=~|!=|!~)\s*"[^"]*")*\s*\}'
)
# The labels Fluent Bit gives every stream (deploy/stack/fluent-bit.yaml).
FLUENT_BIT_LABELS = {"job", "namespace", "app", "container", "level"}


@pytest.mark.parametrize("name", DASHBOARDS)
def test_loki_targets_are_logql_on_the_loki_variable(name: str) -> None:
    """Logs panels, and only they, hold Loki targets; each is a LogQL log query on the
    labels Fluent Bit ships, parsing the JSON line (Prometheus never sees them: queries()
    leaves them out)."""
    board = ALL[name]
    for panel in panels(board):
        loki = [is_loki(t) for t in panel["targets"]]
        assert all(loki) if panel["type"] == "logs" else not any(loki), panel["title"]
    for title, target in log_queries(board):
        assert target["datasource"] == {"type": "loki", "uid": "${loki}"}, title
        expr = target["expr"]
        selector = STREAM_SELECTOR.match(expr)
        assert selector, f"{title}: no stream selector: {expr}"
        labels = set(re.findall(r"(\w+)\s*(?:=|!=|=~|!~)\s*\"", selector[0]))
        assert labels <= FLUENT_BIT_LABELS, f"{title}: {labels - FLUENT_BIT_LABELS}"
        assert 'namespace="servescope"' in selector[0], title
        assert re.search(r"\|\s*json\b", expr[selector.end() :]), f"{title}: not parsed as JSON"
        assert target.get("queryType") == "range" and target.get("maxLines"), title
    # What goes to Prometheus (the parse test, the live-data test) holds no LogQL.
    logql = {target["expr"] for _, target in log_queries(board)}
    assert not logql & {expr for _, expr in queries(board)}


def test_fluent_bit_ships_the_labels_the_log_queries_use() -> None:
    import yaml

    values = yaml.safe_load((repo_root() / "deploy/stack/fluent-bit.yaml").read_text())
    (line,) = [
        line.strip() for line in values["config"]["outputs"].splitlines() if "Labels" in line
    ]
    shipped = set(re.findall(r"(\w+)=", line.removeprefix("Labels")))
    assert shipped == FLUENT_BIT_LABELS, shipped
    # `app` is the pod's app.kubernetes.io/name, which the app chart sets to the service name.
    assert "app=$kubernetes['labels']['app.kubernetes.io/name']" in line
    assert "Line_Format json" in values["config"]["outputs"]


def test_the_overview_shows_the_services_log_lines_with_trace_links() -> None:
    board = ALL["servescope-overview"]
    (panel,) = [p for p in panels(board) if p["type"] == "logs"]
    (target,) = panel["targets"]
    assert panel["datasource"]["uid"] == "${loki}"
    assert 'app=~"$service"' in target["expr"]
    assert panel["options"]["enableLogDetails"] is True
    assert "trace" in panel["description"].lower() and "Jaeger" in panel["description"]
    (link,) = panel["fieldConfig"]["defaults"]["links"]
    assert "${jaeger}" in link["url"] and "${__data.fields.trace_id}" in link["url"]
    # The model dashboard lists the rejected and failed requests' lines the same way.
    (model_panel,) = [p for p in panels(ALL["servescope-model"]) if p["type"] == "logs"]
    assert "request_rejected" in model_panel["targets"][0]["expr"]


def test_metric_names_are_declared() -> None:
    contract = load_contract()
    declared = set()
    for metric in contract.metrics:
        declared.add(metric.name)
        if metric.type == "histogram":
            declared.update(metric.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    allowed = declared | recording_rules() | EXTERNAL_SERIES
    seen = set()
    for name, board in ALL.items():
        for title, expr in queries(board) + variable_queries(board):
            names = metric_names(expr)
            seen |= names
            unknown = names - allowed
            assert not unknown, (
                f"{name}: {title}: {sorted(unknown)} is not in the contract, a rule or the allow-list"
            )
    # The allow-list holds nothing the dashboards no longer read.
    assert seen >= EXTERNAL_SERIES, sorted(EXTERNAL_SERIES - seen)


def test_metric_name_extraction() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{job=~"x|y"}[5m])))'
        " / on (job) group_left b:c:d or 0 * vector(1) > bool 2 unless up offset 1h"
    ) == {"a_bucket", "b:c:d", "up"}
    assert metric_names('topk(15, count by (__name__) ({job="x"}))') == set()


def test_the_model_dashboard_has_what_the_issue_asks_for() -> None:
    board = ALL["servescope-model"]
    by_title = {p["title"]: p for p in panels(board)}
    assert by_title["Inference latency heatmap"]["type"] == "heatmap"
    assert by_title["Confidence distribution over time"]["type"] == "heatmap"
    assert "servescope_model_info" in by_title["Model served"]["targets"][0]["expr"]
    for title in ("Per-stage latency p95", "Predictions by class", "Rejected inputs by reason"):
        assert title in by_title
    psi = by_title["Drift: population stability (PSI)"]["fieldConfig"]["defaults"]["thresholds"]
    shift = by_title["Drift: mean intensity shift"]["fieldConfig"]["defaults"]["thresholds"]
    assert [s["value"] for s in psi["steps"]] == [None, 0.25]
    assert [s["value"] for s in shift["steps"]] == [None, 0.1]


def test_the_slo_dashboard_covers_every_slo() -> None:
    from servescope.dashboards.slos import load_slos

    slos = load_slos((repo_root() / "deploy/prometheus/rules/slos.generated.yml").read_text())
    assert {s.name for s in slos} == {"predictions-availability", "predictions-latency"}
    rows = [p["title"] for p in ALL["servescope-slos"]["panels"] if p["type"] == "row"]
    assert len(rows) == len(slos)
    exprs = " ".join(e for _, e in queries(ALL["servescope-slos"]))
    for record in (
        "slo:objective:ratio",
        "slo:period_error_budget_remaining:ratio",
        "slo:current_burn_rate:ratio",
        "slo:sli_error:ratio_rate30d",
        "ALERTS",
    ):
        assert record in exprs


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    if not PrometheusProcess.available():
        pytest.skip("prometheus is missing: apt-get install prometheus (.ci/run installs it)")
    port = free_port()
    config = {"global": {"scrape_interval": "1m"}, "scrape_configs": []}
    process = PrometheusProcess(port, tmp_path_factory.mktemp("prometheus"), config)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_query_parses_in_prometheus(prometheus, name: str) -> None:
    """Prometheus 2.42 has no /api/v1/parse_query: each query is run, and a parse error
    comes back as errorType bad_data."""
    failures = []
    for title, expr in queries(ALL[name]) + variable_queries(ALL[name]):
        body = prometheus_query(prometheus.url, substitute(expr))
        if body["status"] != "success":
            failures.append(f"{title}: {body.get('errorType')}: {body.get('error')}\n  {expr}")
    assert not failures, "\n".join(failures)


def test_a_broken_query_is_caught(prometheus) -> None:
    body = prometheus_query(prometheus.url, "sum by (job (rate(up[1m]))")
    assert body["status"] == "error" and body["errorType"] == "bad_data"


def test_the_renderer_reads_local_log_lines_for_logs_panels(tmp_path) -> None:
    """Local mode has no Loki: the renderer lists the services' own JSON lines that the
    panel's LogQL (a small subset) selects."""
    import json

    from servescope.cli.dashboard_render import read_log_lines

    lines = {
        "preprocess": [
            {"event": "request_rejected", "level": "warning", "trace_id": "a" * 32},
            {"event": "http_request", "level": "info", "trace_id": "b" * 32},
        ],
        "classifier": [{"event": "model_loaded", "level": "info"}],
    }
    for service, records in lines.items():
        text = "\n".join(
            json.dumps({**r, "service": service, "timestamp": "2026-01-01T00:00:00+00:00"})
            for r in records
        )
        (tmp_path / f"{service}.log").write_text(text + "\nnot json\n")
    t = 1767225600.0
    (overview,) = [t for _, t in log_queries(ALL["servescope-overview"])]
    (model,) = [t for _, t in log_queries(ALL["servescope-model"])]
    assert len(read_log_lines(tmp_path, overview["expr"], t - 1, t + 1)) == 3
    assert read_log_lines(tmp_path, overview["expr"], t + 1, t + 2) == []
    (rejected,) = read_log_lines(tmp_path, model["expr"], t - 1, t + 1)
    assert rejected["trace_id"] == "a" * 32


def test_the_cost_dashboard_shows_series_and_samples_by_model_and_metric() -> None:
    """Before and after the cuts: what each job exposes against what relabeling keeps, and
    series by metric and by model over time."""
    exprs = {p["title"]: [t["expr"] for t in p["targets"]] for p in panels(ALL["servescope-cost"])}
    exposed_and_kept = exprs["Samples per scrape by job: exposed and kept"]
    assert any("scrape_samples_scraped" in e for e in exposed_and_kept)
    assert any("scrape_samples_post_metric_relabeling" in e for e in exposed_and_kept)
    assert any("count by (__name__)" in e for e in exprs["Series by metric (top 10)"])
    assert any("by (model_name)" in e for e in exprs["Series per model (top 15)"])
    assert any("by (model_name)" in e for e in exprs["Samples per second by model (top 10)"])
