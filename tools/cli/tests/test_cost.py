"""`servescope cost`'s arithmetic: the price table, the bill, the projection, the report's
picture, the log counting and the rule operands (no processes; test_cost_run.py runs it)."""

from __future__ import annotations

from pathlib import Path

import promql_parser
import pytest

from servescope.cli import main as cli
from servescope.cli.commands import cost as cost_command
from servescope.cli.cost import prices as pricing
from servescope.cli.cost import project
from servescope.cli.cost.observe import LogWindow, count_lines
from servescope.cli.cost.proof import compare, operands
from servescope.cli.cost.report import chart
from servescope.cli.cost.run import PRICES, STACK_VALUES
from servescope.cli.paths import repo_root

PRICES_TEXT = """
source: test
as_of: "2025"
currency: USD
days_per_month: 30
metrics: {per_1k_series_month: 6.5, included_dpm_per_series: 1}
logs: {per_gb: 0.5}
traces: {per_gb: 0.25}
"""


@pytest.fixture
def prices(tmp_path: Path) -> pricing.Prices:
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES_TEXT)
    return pricing.load(path)


def test_the_shipped_price_table_loads_with_a_source_and_date() -> None:
    table = pricing.load(repo_root() / PRICES)
    assert table.source and table.as_of and table.currency
    assert table.per_1k_series_month > 0 and table.logs_per_gb > 0 and table.traces_per_gb > 0


def test_a_missing_price_is_named(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES_TEXT.replace("logs: {per_gb: 0.5}", ""))
    with pytest.raises(ValueError, match="logs"):
        pricing.load(path)


def test_metrics_are_billed_on_series_or_data_points_whichever_is_more(
    prices: pricing.Prices,
) -> None:
    # 1,000 series scraped every 5 s locally = 200 samples/s; at a 60 s deployment interval
    # that is 1 DPM per series: billed on the series.
    volumes = pricing.Volumes(1000, 200, 5, 0, 0)
    assert pricing.billable_series(volumes, prices, 60) == pytest.approx(1000)
    # At 15 s, 4 DPM per series: billed as 4,000 series.
    assert pricing.billable_series(volumes, prices, 15) == pytest.approx(4000)
    assert pricing.monthly(volumes, prices, 15)["metrics"] == pytest.approx(4 * 6.5)


def test_logs_and_traces_are_billed_per_gigabyte_a_month(prices: pricing.Prices) -> None:
    # 1,000 bytes/s for 30 days = 2.592 GB.
    volumes = pricing.Volumes(0, 0, 5, 1000, 2000)
    cost = pricing.monthly(volumes, prices, 15)
    assert cost["logs"] == pytest.approx(2.592 * 0.5)
    assert cost["traces"] == pytest.approx(2 * 2.592 * 0.25)
    assert cost["total"] == pytest.approx(cost["metrics"] + cost["logs"] + cost["traces"])


def test_the_cut_is_the_share_removed() -> None:
    assert pricing.cut(100, 35) == pytest.approx(0.65)
    assert pricing.cut(0, 0) == 0.0
    assert pricing.cut(10, 12) == pytest.approx(-0.2)


def test_a_straight_line_is_recovered_and_read_off() -> None:
    line = project.fit([(10, 1200), (25, 2700), (50, 5200)])  # 200 + 100 per model
    assert line.intercept == pytest.approx(200)
    assert line.slope == pytest.approx(100)
    assert line.at(5000) == pytest.approx(500_200)
    # One size only: through the origin; never negative.
    assert project.fit([(50, 5000)]).at(500) == pytest.approx(50_000)
    assert project.Line(-100, 1).at(10) == 0.0


def test_fit_all_fits_every_quantity() -> None:
    runs = [
        {"models": n, "figures": {q: 10.0 * n + 3 for q in project.QUANTITIES}} for n in (10, 50)
    ]
    fits = project.fit_all(runs)
    assert set(fits) == set(project.QUANTITIES)
    assert all(f.slope == pytest.approx(10) for f in fits.values())


def test_one_prometheus_runs_out_where_its_head_outgrows_the_memory_limit() -> None:
    head = project.Line(intercept=1000, slope=100)  # series: 1,000 + 100 per model
    # 100 MB fixed + 10 kB per series under a 200 MB limit: 10,000 series, at 90 models.
    memory = project.Line(intercept=100e6, slope=10_000)
    assert project.models_at_capacity(head, memory, 200_000_000) == pytest.approx(90)
    assert project.models_at_capacity(project.Line(1000, 0), memory, 200_000_000) is None


def test_memory_per_series_is_fitted_over_the_runs() -> None:
    line = project.memory_per_series([(1000, 60e6), (3000, 80e6), (5000, 100e6)])
    assert line.intercept == pytest.approx(50e6) and line.slope == pytest.approx(10_000)
    # One run, or a slope that is not positive: the largest run's RSS over its series.
    assert project.memory_per_series([(2000, 80e6)]).slope == pytest.approx(40_000)
    assert project.memory_per_series([(1000, 90e6), (2000, 80e6)]).slope == pytest.approx(40_000)


def test_the_stack_facts_come_from_the_stack_values() -> None:
    facts = project.StackFacts.load(repo_root() / STACK_VALUES)
    assert facts.scrape_interval_seconds > 0
    assert facts.prometheus_memory_limit_bytes >= 1 << 20


def test_log_lines_are_counted_by_level_between_two_moments(tmp_path: Path) -> None:
    log = tmp_path / "preprocess.log"
    log.write_bytes(b'{"level":"info","event":"before"}\n{"level":"info","ev')
    window = LogWindow([log])
    window.start()
    with log.open("ab") as handle:  # the rest of a line begun before start(), then new ones
        handle.write(b'ent":"x"}\n{"level":"warning","event":"a"}\nnot json\n{"level":"info"')
    lines = window.lines()
    assert lines == [b'{"level":"warning","event":"a"}\n', b"not json\n"]
    counts = count_lines(lines)
    assert counts["warning"] == {"lines": 1, "bytes": len(lines[0])}
    assert counts["other"]["lines"] == 1 and counts["info"]["lines"] == 0


def test_an_alert_is_checked_below_its_comparisons() -> None:
    expr = "histogram_quantile(0.95, sum by (le) (rate(a_bucket[5m]))) > 0.2 unless on () b > 0"
    parts = [str(p) for p in operands(promql_parser.parse(expr))]
    assert len(parts) == 2
    assert parts[0].startswith("histogram_quantile") and parts[1].startswith("b")
    # A `bool` comparison returns data either way: it is its own operand.
    assert len(operands(promql_parser.parse("a > bool 1"))) == 1


def test_the_proof_names_what_the_cut_silenced() -> None:
    def entry(status: str, missing: list[str] | None = None) -> dict[str, object]:
        return {"kind": "alert", "name": "A", "status": status, "missing": missing or []}

    kept = {
        "x": entry("answers"),
        "y": entry("no data", ["m"]),
        "z": entry("inner answers"),
        "w": entry("inner answers"),
    }
    cut = {
        "x": entry("no data", ["n"]),
        "y": entry("no data", ["m"]),
        "z": entry("answers"),
        "w": entry("series answer"),
    }
    result = compare(kept, cut)
    assert result["lost"] == ["x", "w"]
    assert result["silent_in_both"] == {"y": ["m"]}
    counts = result["by_kind"]["alert"]
    assert counts["total"] == 4 and counts["no data"] == 2 and counts["answers"] == 1


def test_the_picture_has_a_bar_per_pillar_and_profile() -> None:
    costs = {
        "kept": {"metrics": 100.0, "logs": 50.0, "traces": 10.0, "total": 160.0},
        "cut": {"metrics": 30.0, "logs": 5.0, "traces": 1.0, "total": 36.0},
    }
    svg = chart({"costs": costs, "prices": {"currency": "USD"}, "plan": {"models": 50}})
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert svg.count("<rect") == 1 + 2 + 4 * 2  # background, legend, bars
    assert "-78%" in svg  # the total's cut


def test_the_command_defaults_to_fifty_models_and_the_docs() -> None:
    args = cli.build_parser().parse_args(["cost"])
    assert args.func is cost_command.cmd_cost
    assert (args.models, args.sizes, args.out, args.json) == (
        50,
        "10,25",
        "docs/cost.md",
        "docs/cost.json",
    )
    assert args.reprice is False


def test_the_fluent_bit_filter_runs_in_luajit_over_log_lines() -> None:
    """The driver hands each line's fields to the real sampling.lua (values with the
    driver's separators and non-ASCII intact) and reads one decision per line."""
    import json
    import shutil

    from servescope.cli.cost.run import SAMPLING_LUA, lua_keeps

    if shutil.which("luajit") is None:
        pytest.skip("luajit is missing: apt-get install luajit (.ci/run installs it)")
    kept_trace, dropped_trace = "1" * 16 + "0" * 16, "1" * 16 + "f" * 16  # low 64 bits decide
    lines = [
        {"level": "warning", "event": "a&b=c%d+e é", "trace_id": dropped_trace},
        {"level": "info", "event": "x", "trace_id": kept_trace},
        {"level": "info", "event": "y & z", "trace_id": dropped_trace},
        {"level": "error", "event": "boom", "trace_id": dropped_trace, "duration_ms": 1.5},
    ]
    raw = [json.dumps(line).encode() + b"\n" for line in lines] + [b"not json\n"]
    assert lua_keeps(raw, repo_root() / SAMPLING_LUA, 0.1) == [True, True, False, True, True]
