"""Checker for beginner/04-dashboard-panel: a "Low-confidence predictions" panel on the
service overview dashboard, written as code and generated into dashboards/*.json.

1. dashboards/servescope-overview.json has the panel, with a unit fit for a share
   (percentunit) and a description.
2. The JSON is what the dashboard code generates (`servescope dashboards` was run).
3. Its query reads the confidence histogram through rate(), Prometheus accepts it (with
   Grafana's variables filled in as Grafana would), it returns data from the live lab,
   and the value agrees with the share computed here at the same instant.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import TYPE_CHECKING, Any

from servescope.cli.labs import QueryError

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

LAB = "beginner/04-dashboard-panel"
TITLE = "low-confidence predictions"
BOARD = "dashboards/servescope-overview.json"
HISTOGRAM = "servescope_prediction_confidence_ratio"
# Values Grafana puts in for the dashboard variables, at a typical zoom.
VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "service": "preprocess|classifier|postprocess",
}
REFERENCE = f'sum(rate({HISTOGRAM}_bucket{{le="0.5"}}[1m])) / sum(rate({HISTOGRAM}_count[1m]))'


def _panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for item in items:
        found.append(item)
        found += _panels(item.get("panels") or [])  # collapsed rows hold their panels
    return found


def _fill(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", lambda m: VARIABLES.get(m.group(1), m.group(0)), expr)


def _norm(title: str) -> str:
    return re.sub(r"[\s_-]+", " ", title.strip().lower())


def check(ctx: CheckContext) -> None:
    try:
        board = json.loads((ctx.root / BOARD).read_text())
    except (OSError, ValueError) as exc:
        ctx.fail(f"{BOARD} is readable JSON", f"{exc}; regenerate it: uv run servescope dashboards")
        return
    panel = next(
        (p for p in _panels(board.get("panels", [])) if _norm(p.get("title", "")) == _norm(TITLE)),
        None,
    )
    if not ctx.require(
        panel is not None,
        f'{BOARD} has a panel titled "Low-confidence predictions"',
        "add it in dashboards/src/servescope/dashboards/overview.py (with timeseries_panel, "
        "like its neighbours), then write the JSON: uv run servescope dashboards",
    ):
        return
    assert panel is not None
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
    ctx.require(
        unit == "percentunit",
        'the panel has a unit for a share between 0 and 1 ("percentunit")',
        (
            'its unit is "percent", which expects 0-100 and would show 0.03 as 0.03%; '
            '"percentunit" shows 0.03 as 3%'
        )
        if unit == "percent"
        else f"its unit is {unit!r}. The unit tells Grafana how to print the number: a share "
        'of 0-1 is "percentunit"',
    )
    ctx.require(
        len(str(panel.get("description", "")).strip()) >= 30,
        "the panel has a description saying what it shows and why it matters",
        "the description is the (i) tooltip on-call reads at 3 a.m.: what the line is, and "
        "what a rise means (drifted inputs, a bad model version)",
    )
    rendered = ctx.python(
        "-c",
        "import sys; from pathlib import Path; "
        "from servescope.dashboards import render_json; "
        "sys.stdout.write(render_json('servescope-overview', Path('.').resolve()))",
    )
    ctx.require(
        rendered.returncode == 0 and rendered.stdout == (ctx.root / BOARD).read_text(),
        f"{BOARD} is what the dashboard code generates",
        "the JSON is generated from the code: run `uv run servescope dashboards` after editing "
        "overview.py"
        + (f" (the code fails: {rendered.stderr.strip()[-400:]})" if rendered.returncode else ""),
    )
    targets = [t for t in panel.get("targets", []) if t.get("expr")]
    if not ctx.require(
        targets,
        "the panel has a PromQL query",
        "give timeseries_panel a list with one Query(expr, legend)",
    ):
        return
    expr = str(targets[0]["expr"])
    ctx.require(
        HISTOGRAM in expr,
        f"the query reads the confidence histogram ({HISTOGRAM})",
        f'the share of unsure predictions comes from {HISTOGRAM}_bucket{{le="0.5"}} and '
        f"{HISTOGRAM}_count",
    )
    ctx.require(
        re.search(r"\b(rate|increase|irate)\s*\(", expr),
        "the query turns the counters into rates",
        "_bucket and _count are counters since the process started; the share over the "
        "last minutes needs rate(...[$__rate_interval]) of each",
    )
    at = time.time()
    try:
        samples = ctx.query(_fill(expr), at=at)
    except QueryError as exc:
        ctx.fail("Prometheus accepts the query", f"Prometheus says: {exc}")
        return
    ctx.ok("Prometheus accepts the query")
    values = [s.value for s in samples if math.isfinite(s.value)]
    if not ctx.require(
        values,
        "the query returns data from the live lab",
        "it returns nothing (or only NaN): try it at http://127.0.0.1:9090 with [1m] in place "
        f"of $__rate_interval; is the lab running? `servescope lab start {LAB}`",
    ):
        return
    expected = ctx.query(REFERENCE, at=at)
    share = expected[0].value if expected else math.nan
    ctx.require(
        all(abs(v - share) <= 0.02 for v in values),
        f"it shows the share of predictions at or below 0.5 confidence ({share:.3f} now)",
        f"yours shows {', '.join(f'{v:.3f}' for v in values)}: divide the rate of the "
        'le="0.5" bucket by the rate of all predictions (_count), each sum()med',
    )
