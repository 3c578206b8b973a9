"""Observability cost: active series by job and metric, samples ingested, log lines kept and
dropped by level."""

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
        "What observing Servescope costs: active series by job and metric, samples ingested "
        "per second, and log lines kept and dropped by level.",
        [("Metrics", metrics), ("Logs", logs)],
    )
