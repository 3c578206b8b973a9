"""Reference solution: read the drift scores by signal from Prometheus, compare each with its
threshold from the pipeline's declaration, and call the cause from what moved: the input
statistics (pixel_psi, mean_intensity_shift) move before the model is involved, while the
model's calibrated confidence stays above the collapse threshold."""

from __future__ import annotations

from typing import TYPE_CHECKING

from servescope.telemetry.pipeline import PIPELINE

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

WINDOW = "30s"


def _over(ctx: CheckContext, function: str) -> set[str]:
    thresholds = PIPELINE.drift_thresholds
    samples = ctx.query(f"{function}(servescope_input_drift_score[{WINDOW}])")
    return {
        s.labels["signal"]
        for s in samples
        if s.labels.get("signal") in thresholds and s.value > thresholds[s.labels["signal"]]
    }


def solve(ctx: CheckContext) -> None:
    def settled() -> set[str] | None:
        steady, some = _over(ctx, "min_over_time"), _over(ctx, "max_over_time")
        return steady if steady and steady == some else None

    signals = ctx.wait_for(settled, timeout=90, interval=1) or _over(ctx, "min_over_time")
    if not signals:
        raise RuntimeError("no drift signal is over its threshold")
    ctx.record_answer(" ".join(sorted(signals)) + " inputs")
