"""Reference solution: the panel in overview.py, the JSON regenerated."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

MODULE = "dashboards/src/servescope/dashboards/overview.py"
PANEL = """\
        timeseries_panel(
            "Low-confidence predictions",
            "Share of predictions whose calibrated top-1 confidence is at most 0.5, from the "
            "servescope_prediction_confidence_ratio histogram (its le=0.5 bucket over its "
            "count). A rise means the model is unsure: drifted inputs or a bad model version.",
            "percentunit",
            [
                Query(
                    'sum(rate(servescope_prediction_confidence_ratio_bucket{le="0.5"}'
                    "[$__rate_interval])) / "
                    "sum(rate(servescope_prediction_confidence_ratio_count[$__rate_interval]))",
                    "share at or below 0.5",
                )
            ],
            minimum=0,
            maximum=1,
        ),
"""


def solve(ctx: CheckContext) -> None:
    module = ctx.root / MODULE
    text = module.read_text()
    if "Low-confidence predictions" not in text:
        anchor = "    red = [\n"
        if anchor not in text:
            raise RuntimeError(f"{MODULE} has no `red = [` list to add the panel to")
        module.write_text(text.replace(anchor, anchor + PANEL, 1))
    result = ctx.servescope("dashboards")
    if result.returncode != 0:
        raise RuntimeError(f"servescope dashboards failed: {result.stdout}{result.stderr}")
