"""Observability cost: active series by job, metric and model, samples ingested, what the
relabel rules keep of what each job exposes, and log lines kept and dropped by level.

"Before and after" in one Prometheus: each scrape records what the target exposed
(scrape_samples_scraped) beside what survived relabeling (scrape_samples_post_metric_relabeling),
and the by-metric and by-model panels over time drop where the cost profile is switched on.
`servescope cost` measures the same quantities in two runs (docs/cost.md)."""

from __future__ import annotations

from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard

from servescope.dashboards.common import (
    SERVICES_RE,
    Query,
    bargauge_panel,
    dashboard,
    stat_panel,
    timeseries_panel,
)

UID = "servescope-cost"


def build(root: Path) -> Dashboard:
    metrics = [
        stat_panel(
            "Active series (head)",
            "Series in Prometheus's head block (prometheus_tsdb_head_series): the main driver "
            "of its memory.",
            "short",
            [Query("sum(prometheus_tsdb_head_series)", "series")],
        ),
        stat_panel(
            "Samples ingested",
            "Samples Prometheus appends per second (prometheus_tsdb_head_samples_appended_total).",
            "cps",
            [
                Query(
                    "sum(rate(prometheus_tsdb_head_samples_appended_total[$__rate_interval]))",
                    "samples/s",
                )
            ],
        ),
        stat_panel(
            "Samples per scrape",
            "Samples all targets expose per scrape together (scrape_samples_scraped).",
            "short",
            [Query("sum(scrape_samples_scraped)", "samples")],
        ),
        stat_panel(
            "Log lines dropped",
            "Share of log lines the sampler dropped over the interval "
            "(servescope_log_lines_total, decision=dropped).",
            "percentunit",
            [
                Query(
                    'sum(rate(servescope_log_lines_total{decision="dropped"}[$__rate_interval])) '
                    "/ sum(rate(servescope_log_lines_total[$__rate_interval]))",
                    "dropped",
                )
            ],
        ),
        timeseries_panel(
            "Active series by job",
            "Series each scrape job exposes after relabelling "
            "(scrape_samples_post_metric_relabeling), per job.",
            "short",
            [Query("sum by (job) (scrape_samples_post_metric_relabeling)", "{{job}}")],
        ),
        timeseries_panel(
            "Samples ingested per second",
            "Samples appended to Prometheus's head block per second, all jobs together; "
            "it grows with series times scrape frequency.",
            "cps",
            [
                Query(
                    "sum(rate(prometheus_tsdb_head_samples_appended_total[$__rate_interval]))",
                    "all",
                )
            ],
        ),
        bargauge_panel(
            "Top 15 metrics by series",
            "The metric names with the most series across the Servescope jobs: where "
            "cardinality comes from (histograms count one series per bucket and label set).",
            "short",
            [
                Query(
                    f'topk(15, count by (__name__) ({{job=~"{SERVICES_RE}"}}))',
                    "{{__name__}}",
                    instant=True,
                )
            ],
            width=24,
            height=10,
        ),
    ]
    # Series carrying a model's name; every per-model series has the label.
    per_model = '{model_name!=""}'
    cuts = [
        stat_panel(
            "Samples dropped by relabeling",
            "Share of the samples the services expose per scrape that the relabel and drop "
            "rules discard (1 - scrape_samples_post_metric_relabeling / scrape_samples_scraped).",
            "percentunit",
            [
                Query(
                    f'1 - sum(scrape_samples_post_metric_relabeling{{job=~"{SERVICES_RE}"}}) '
                    f'/ sum(scrape_samples_scraped{{job=~"{SERVICES_RE}"}})',
                    "dropped",
                )
            ],
        ),
        stat_panel(
            "Series per model",
            "Mean number of series carrying a model_name label, per model served.",
            "short",
            [
                Query(
                    f"count({per_model}) / count(count by (model_name) ({per_model}))",
                    "series/model",
                )
            ],
        ),
        stat_panel(
            "Models with series",
            "Models that have at least one series (bounded by the repository's size).",
            "short",
            [Query(f"count(count by (model_name) ({per_model}))", "models")],
        ),
        stat_panel(
            "Series with a model label",
            "All series carrying a model_name label: what grows with the fleet.",
            "short",
            [Query(f"count({per_model})", "series")],
        ),
        timeseries_panel(
            "Samples per scrape by job: exposed and kept",
            "Before and after the cuts, per job: what the target exposes "
            "(scrape_samples_scraped) and what is kept after metric relabeling "
            "(scrape_samples_post_metric_relabeling).",
            "short",
            [
                Query(
                    f'sum by (job) (scrape_samples_scraped{{job=~"{SERVICES_RE}"}})',
                    "{{job}} exposed",
                ),
                Query(
                    f'sum by (job) (scrape_samples_post_metric_relabeling{{job=~"{SERVICES_RE}"}})',
                    "{{job}} kept",
                ),
            ],
        ),
        timeseries_panel(
            "Series by metric (top 10)",
            "Series per metric name over time: a metric the cost profile drops or aggregates "
            "falls to zero where the profile is switched on.",
            "short",
            [
                Query(
                    f'topk(10, count by (__name__) ({{job=~"{SERVICES_RE}"}}))',
                    "{{__name__}}",
                )
            ],
        ),
        bargauge_panel(
            "Series per model (top 15)",
            "Series carrying each model's name, the most first: per-model histograms dominate.",
            "short",
            [
                Query(
                    f"topk(15, count by (model_name) ({per_model}))",
                    "{{model_name}}",
                    instant=True,
                )
            ],
        ),
        timeseries_panel(
            "Samples per second by model (top 10)",
            "Samples ingested per second for each model's series (one a scrape: its series "
            "over the scrape interval Prometheus measures), over time: before and after the "
            "cuts. (Counting samples with count_over_time would drop the metric names and "
            "collide the model's series of different metrics.)",
            "cps",
            [
                Query(
                    f"topk(10, count by (model_name) ({per_model})) / scalar("
                    'min(prometheus_target_interval_length_seconds{quantile="0.5"}))',
                    "{{model_name}}",
                )
            ],
        ),
    ]
    logs = [
        timeseries_panel(
            "Log lines by level and decision",
            "Log lines written per second, by level and by the sampler's decision (kept or "
            "dropped); WARNING and above are always kept.",
            "cps",
            [
                Query(
                    "sum by (level, decision) (rate(servescope_log_lines_total[$__rate_interval]))",
                    "{{level}} {{decision}}",
                )
            ],
            stack=True,
        ),
        timeseries_panel(
            "Log lines kept by service",
            "Log lines kept per second by each service (what the log pipeline ships and stores).",
            "cps",
            [
                Query(
                    'sum by (job) (rate(servescope_log_lines_total{decision="kept"}[$__rate_interval]))',
                    "{{job}}",
                )
            ],
        ),
    ]
    return dashboard(
        UID,
        "Servescope / Observability cost",
        "What observing Servescope costs: active series by job, metric and model, samples "
        "ingested per second, what relabeling keeps, and log lines kept and dropped by level.",
        [
            ("Metrics", metrics),
            ("Before and after the cuts: by job, metric and model", cuts),
            ("Logs", logs),
        ],
    )
