"""Checker for drills/02-drift-and-confidence-collapse, graded against live Prometheus.

1. Drift traffic reached the classifier (its drift window is full).
2. Every signal the answer names is over its threshold (the thresholds are the pipeline's,
   servescope.telemetry.pipeline PIPELINE.drift_thresholds) at some point in the last 30 s,
   and every signal that stayed over its threshold for the whole of the last 30 s is named.
3. The cause: the inputs (upstream), not the model. The input-only signals (pixel_psi,
   mean_intensity_shift) have moved while the model's own confidence has not collapsed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from servescope.telemetry.pipeline import PIPELINE

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

LAB = "drills/02-drift-and-confidence-collapse"
WINDOW = "30s"
INPUT_CAUSES = {"inputs", "input", "upstream", "data"}
MODEL_CAUSES = {"model", "classifier", "weights"}
# Statistics of the inputs alone, computed before the model sees them.
INPUT_SIGNALS = {"pixel_psi", "mean_intensity_shift"} & set(PIPELINE.drift_thresholds)
COLLAPSE = 0.9  # ServescopePredictionConfidenceCollapse's threshold (model.alerts.yml)
CONFIDENCE = (
    f"sum(rate(servescope_prediction_confidence_ratio_sum[{WINDOW}])) / "
    f"sum(rate(servescope_prediction_confidence_ratio_count[{WINDOW}]))"
)


def _by_signal(ctx: CheckContext, function: str) -> dict[str, float]:
    samples = ctx.query(f"{function}(servescope_input_drift_score[{WINDOW}])")
    return {s.labels.get("signal", ""): s.value for s in samples}


def crossed(ctx: CheckContext) -> tuple[set[str], set[str]]:
    """(over at some point in the window, over for the whole window)."""
    thresholds = PIPELINE.drift_thresholds
    highest = _by_signal(ctx, "max_over_time")
    lowest = _by_signal(ctx, "min_over_time")
    some = {s for s, v in highest.items() if s in thresholds and v > thresholds[s]}
    steady = {s for s, v in lowest.items() if s in thresholds and v > thresholds[s]}
    return some, steady


def check(ctx: CheckContext) -> None:
    thresholds = PIPELINE.drift_thresholds
    window = ctx.query("max(servescope_drift_window_inputs)")
    ctx.require(
        window and window[0].value >= 100,
        "drift traffic reached the classifier (its drift window holds 100 inputs)",
        "the lab's traffic is not flowing: servescope lab restart " + LAB,
    )
    answer = (ctx.answer or "").strip().lower()
    if not ctx.require(
        answer,
        "you answered the signals that crossed and the cause",
        f"servescope lab answer {LAB} SIGNAL... inputs|model",
    ):
        return
    words = [w for w in re.split(r"[\s,;/]+", answer) if w]
    named = {w for w in words if w in thresholds}
    some, steady = crossed(ctx)
    scores = ", ".join(
        f"{signal} (threshold {thresholds[signal]:g})" for signal in sorted(thresholds)
    )
    ctx.require(
        bool(named),
        "the answer names drift signals",
        f"name the signals by their `signal` label: {scores}",
    )
    wrong = sorted(named - some)
    ctx.require(
        bool(named) and not wrong,
        "every signal you named is over its threshold",
        f"{', '.join(wrong)} not over its threshold in the last {WINDOW}: compare each "
        "signal's value with its own threshold (the PSIs and the mean shift differ)",
    )
    missing = sorted(steady - named)
    ctx.require(
        bool(named) and not missing,
        "every signal steadily over its threshold is named",
        f"{len(missing)} more signal(s) have been over their threshold for the whole of the "
        f"last {WINDOW}: query servescope_input_drift_score by signal",
    )
    causes = {w for w in words if w in INPUT_CAUSES | MODEL_CAUSES}
    # Live: the inputs are the cause when a statistic of the inputs alone moved; the model
    # would be when its confidence collapsed while the inputs looked like the training data.
    inputs_moved = bool(some & INPUT_SIGNALS)
    confidence = ctx.query(CONFIDENCE)
    collapsed = bool(confidence) and confidence[0].value < COLLAPSE
    expected = INPUT_CAUSES if inputs_moved or not collapsed else MODEL_CAUSES
    other = MODEL_CAUSES if expected is INPUT_CAUSES else INPUT_CAUSES
    ctx.require(
        bool(causes & expected) and not causes & other,
        "the cause is the inputs (upstream), not the model",
        "pixel_psi and mean_intensity_shift measure the inputs alone, before the model sees "
        "them, and the model's own mean confidence has not collapsed below 0.9: is the model "
        "wrong, or is it being shown something else?"
        if causes
        else "end the answer with the cause: `inputs` or `model`",
    )
