"""Model: inference latency, per-stage latency, confidence, predictions, rejections, drift,
and the rejected and failed requests' log lines (Loki) with links to their traces."""

from __future__ import annotations

from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard

from servescope.dashboards.common import (
    LOG_STREAMS,
    Query,
    bargauge_panel,
    dashboard,
    heatmap_panel,
    logs_panel,
    stat_panel,
    table_panel,
    timeseries_panel,
)
from servescope.telemetry.pipeline import PIPELINE, PipelineError

UID = "servescope-model"

# Drift signals and thresholds from the telemetry contract's pipeline section (the source
# model.alerts.yml is tested against). The PSI panel draws one threshold line for both PSIs.
PIXEL_PSI, CLASS_PSI, SHIFT = PIPELINE.expect_drift_signals(
    "pixel_psi", "class_psi", "mean_intensity_shift", where=__name__
)
if PIXEL_PSI.threshold != CLASS_PSI.threshold:
    raise PipelineError(
        f"{__name__} draws one PSI threshold, but pixel_psi and class_psi have different ones"
    )
PSI_THRESHOLD = PIXEL_PSI.threshold
SHIFT_THRESHOLD = SHIFT.threshold
STAGES = ", ".join(PIPELINE.stage_names)
TOTAL = PIPELINE.total.name


def _signals(names: list[str]) -> str:
    return f'signal="{names[0]}"' if len(names) == 1 else f'signal=~"{"|".join(names)}"'


def _by_threshold() -> dict[float, list[str]]:
    """Drift signals grouped by their threshold, in declaration order."""
    groups: dict[float, list[str]] = {}
    for signal in PIPELINE.drift:
        groups.setdefault(signal.threshold, []).append(signal.name)
    return groups


def build(root: Path) -> Dashboard:
    info = [
        table_panel(
            "Model served",
            "The model each classifier serves (servescope_model_info): name, version, the "
            "SHA-256 of the model file and the runtime. More than one row per instance means a "
            "rollout is in progress.",
            "none",
            [
                Query(
                    "max by (job, instance, model_name, model_version, sha256, runtime, "
                    "runtime_version) (servescope_model_info)",
                    instant=True,
                    table=True,
                )
            ],
            width=16,
            height=5,
        ),
        stat_panel(
            "Model load time",
            "Time the model took to load and warm up at the classifier's startup "
            "(servescope_model_load_duration_seconds).",
            "s",
            [Query("max by (job) (servescope_model_load_duration_seconds)", "{{job}}")],
            width=8,
            height=5,
        ),
    ]
    latency = [
        heatmap_panel(
            "Inference latency heatmap",
            "Distribution of onnxruntime inference time per call (the model alone, no HTTP), "
            "from servescope_inference_duration_seconds; each cell counts the calls that fell "
            "in a bucket during the interval. Exemplars link to the trace in Jaeger.",
            "s",
            [
                Query(
                    "sum by (le) (increase(servescope_inference_duration_seconds_bucket"
                    "[$__rate_interval]))",
                    "{{le}}",
                    exemplar=True,
                    heatmap=True,
                )
            ],
        ),
        timeseries_panel(
            "Inference latency p50 / p95 / p99",
            "Percentiles of onnxruntime inference time per call. Exemplars link to the trace "
            "in Jaeger.",
            "s",
            [
                Query(
                    f"histogram_quantile({q}, sum by (le) (rate("
                    "servescope_inference_duration_seconds_bucket[$__rate_interval])))",
                    f"p{round(q * 100)}",
                    exemplar=True,
                )
                for q in (0.5, 0.95, 0.99)
            ],
        ),
        timeseries_panel(
            "Per-stage latency p95",
            f"95th percentile of each stage of a prediction at the edge ({STAGES}) from "
            "servescope_stage_duration_seconds. The dashed line is the 200 ms p95 alert "
            f"threshold on {TOTAL}. Exemplars link to Jaeger.",
            "s",
            [
                Query(
                    "histogram_quantile(0.95, sum by (stage, le) (rate("
                    "servescope_stage_duration_seconds_bucket[$__rate_interval])))",
                    "{{stage}}",
                    exemplar=True,
                )
            ],
            thresholds=[(None, "green"), (0.2, "red")],
        ),
        timeseries_panel(
            "Where a prediction's time goes (mean per stage)",
            "Mean time per request spent in each stage, stacked: the height is the mean "
            "end-to-end time, and the largest band is where to look first.",
            "s",
            [
                Query(
                    f'sum by (stage) (rate(servescope_stage_duration_seconds_sum{{stage!="{TOTAL}"}}[$__rate_interval]))'
                    f' / sum by (stage) (rate(servescope_stage_duration_seconds_count{{stage!="{TOTAL}"}}[$__rate_interval]))',
                    "{{stage}}",
                )
            ],
            stack=True,
        ),
    ]
    predictions = [
        heatmap_panel(
            "Confidence distribution over time",
            "Calibrated top-1 confidence of the predictions (servescope_prediction_confidence_"
            "ratio): each cell counts the predictions in a confidence bucket. A healthy model "
            "keeps nearly all of them in the top buckets.",
            "percentunit",
            [
                Query(
                    "sum by (le) (increase(servescope_prediction_confidence_ratio_bucket"
                    "[$__rate_interval]))",
                    "{{le}}",
                    heatmap=True,
                )
            ],
        ),
        timeseries_panel(
            "Mean confidence",
            "Mean calibrated confidence of the predictions; about 0.99 on clean digits. The "
            "dashed line is the 0.9 collapse alert threshold.",
            "percentunit",
            [
                Query(
                    "sum(rate(servescope_prediction_confidence_ratio_sum[$__rate_interval]))"
                    " / sum(rate(servescope_prediction_confidence_ratio_count[$__rate_interval]))",
                    "mean confidence",
                )
            ],
            thresholds=[(None, "red"), (0.9, "green")],
            maximum=1,
        ),
        timeseries_panel(
            "Predictions by class",
            "Predictions per second by predicted class label (servescope_predictions_total). "
            "A shift in the mix is what class_psi measures.",
            "ops",
            [
                Query(
                    "sum by (class_label) (rate(servescope_predictions_total[$__rate_interval]))",
                    "{{class_label}}",
                )
            ],
            stack=True,
        ),
        timeseries_panel(
            "Rejected inputs by reason",
            "Requests refused for bad input per second, by service and reason "
            "(servescope_rejected_inputs_total; a fixed set of reasons).",
            "reqps",
            [
                Query(
                    "sum by (job, reason) (rate(servescope_rejected_inputs_total[$__rate_interval]))",
                    "{{job}} {{reason}}",
                )
            ],
            stack=True,
        ),
    ]
    drift = [
        timeseries_panel(
            "Drift: population stability (PSI)",
            f"{PIXEL_PSI.name} (pixel-intensity histogram) and {CLASS_PSI.name} (predicted "
            "classes against the training prior) over the last 100 inputs; 0 = identical. The "
            f"dashed line is the drift threshold {PSI_THRESHOLD:g}.",
            "none",
            [
                Query(
                    "max by (signal) (servescope_input_drift_score"
                    f"{{{_signals([PIXEL_PSI.name, CLASS_PSI.name])}}})",
                    "{{signal}}",
                )
            ],
            thresholds=[(None, "green"), (PSI_THRESHOLD, "red")],
            minimum=0,
        ),
        timeseries_panel(
            "Drift: mean intensity shift",
            "Change of the mean pixel intensity of the last 100 inputs from the model card's "
            f"reference, on the 0-1 scale. The dashed line is the drift threshold {SHIFT_THRESHOLD:g}.",
            "none",
            [
                Query(
                    f"max by (signal) (servescope_input_drift_score{{{_signals([SHIFT.name])}}})",
                    "{{signal}}",
                )
            ],
            thresholds=[(None, "green"), (SHIFT_THRESHOLD, "red")],
            minimum=0,
        ),
        bargauge_panel(
            "Drift score as a share of its threshold",
            "Each drift signal divided by its threshold ("
            + ", ".join(f"{s.name} {s.threshold:g}" for s in PIPELINE.drift)
            + "): 100% or more means the inputs have drifted.",
            "percentunit",
            [
                Query(
                    f"max by (signal) (servescope_input_drift_score{{{_signals(names)}}})"
                    f" / {threshold:g}",
                    "{{signal}}",
                )
                for threshold, names in _by_threshold().items()
            ],
            thresholds=[(None, "green"), (0.8, "orange"), (1, "red")],
            minimum=0,
            maximum=1.5,
        ),
        timeseries_panel(
            "Drift window fill",
            "Inputs currently in the drift window (servescope_drift_window_inputs). pixel_psi "
            "and mean_intensity_shift need 20, class_psi 100; scores are 0 until then.",
            "short",
            [Query("max by (job) (servescope_drift_window_inputs)", "{{job}}")],
        ),
    ]
    log_lines = [
        logs_panel(
            "Rejected and failed requests",
            "Log lines of requests refused for bad input (request_rejected, with kind and "
            "stage) or failed (request_failed, unhandled_error), from every service, newest "
            "first. These lines are always kept; open one and its trace_id links to the "
            "request's trace in Jaeger.",
            f'{{{LOG_STREAMS}}} | json | event=~"request_rejected|request_failed|unhandled_error"',
            height=8,
        )
    ]
    return dashboard(
        UID,
        "Servescope / Model",
        "The served model: what it is, how fast it infers, how sure it is, what it predicts, "
        "what it refuses, and whether its inputs still look like its training data.",
        [
            ("Model", info),
            ("Latency", latency),
            ("Predictions", predictions),
            ("Input drift", drift),
            ("Rejections in the logs", log_lines),
        ],
    )
