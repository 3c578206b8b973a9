"""`servescope cost` on a small fleet for a few seconds: both runs measured for real (the
local stack, Prometheus, the services' logs through the Lua filter, spans through the OTLP
receiver), the report and its JSON written, the cut computed from the two runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from servescope.cli.cost import prices as pricing
from servescope.cli.cost.report import write
from servescope.cli.cost.run import Plan, reprice, run

pytestmark = pytest.mark.slow


@pytest.mark.timeout(120)
def test_a_short_cost_run_writes_the_report_from_both_runs(tmp_path: Path) -> None:
    for binary in ("prometheus", "luajit"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is missing: apt-get install {binary} (.ci/run installs it)")
    plan = Plan(
        models=3,
        seconds=5,
        rate=10,
        sizes=(),
        warmup=2,
        run_dir=tmp_path / "runs",
        prove=False,  # the proof and the drill take minutes; `servescope cost` runs them
        parallel=True,
        say=lambda _: None,
    )
    report = run(plan)
    markdown, json_path = tmp_path / "cost.md", tmp_path / "cost.json"
    write(report, markdown, json_path)

    saved = json.loads(json_path.read_text())
    for profile in ("kept", "cut"):
        figures = saved["runs"][profile]
        assert figures["models"] == 3
        for name in (
            "billed_series",
            "billed_samples_per_second",
            "log_bytes_per_second",
            "spans_per_second",
            "span_bytes_per_second",
            "requests_per_second",
        ):
            assert figures[name] > 0, (profile, name, figures[name])
        assert saved["costs"][profile]["total"] > 0
    # The cut is computed from the two runs' own bills.
    kept, cut = saved["costs"]["kept"], saved["costs"]["cut"]
    for pillar in (*pricing.PILLARS, "total"):
        assert saved["costs"]["share_cut"][pillar] == pytest.approx(
            pricing.cut(kept[pillar], cut[pillar])
        )
    assert saved["proof"]["warning_error_lines_lost"] == 0
    text = markdown.read_text()
    assert (
        "## The monthly bill" in text
        and f"{100 * saved['costs']['share_cut']['total']:.0f}%" in text
    )
    assert markdown.with_suffix(".svg").read_text().startswith("<svg")
    # Repricing the saved report at the same table reproduces its bills.
    again = reprice(saved)
    for profile in ("kept", "cut"):
        assert again["costs"][profile]["total"] == pytest.approx(saved["costs"][profile]["total"])
