"""Service overview: RED per service and route, in-flight requests, readiness, resources,
and the selected services' log lines (Loki) with links to their traces."""

from __future__ import annotations

from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard

from servescope.dashboards.common import (
    LOG_STREAMS,
    NOT_TRAFFIC,
    SERVICES_RE,
    Query,
    dashboard,
    logs_panel,
    query_variable,
    stat_panel,
    timeseries_panel,
)

UID = "servescope-overview"
REQUESTS = (
    f'http_server_request_duration_seconds_count{{job=~"$service", http_route!~"{NOT_TRAFFIC}"}}'
)
BUCKETS = (
    f'http_server_request_duration_seconds_bucket{{job=~"$service", http_route!~"{NOT_TRAFFIC}"}}'
)


def _quantile(q: float, by: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({BUCKETS}[$__rate_interval])))"


def build(root: Path) -> Dashboard:
    health = [
        stat_panel(
            "Ready",
            "1 when the service's /readyz answers 200 (servescope_ready), per service.",
            "none",
            [Query('min by (job) (servescope_ready{job=~"$service"})', "{{job}}")],
            width=8,
            thresholds=[(None, "red"), (1, "green")],
            mappings={"0": "not ready", "1": "ready"},
        ),
        stat_panel(
            "Scrape up",
            "1 when Prometheus's last scrape of the service's /metrics succeeded (`up`).",
            "none",
            [Query('min by (job) (up{job=~"$service"})', "{{job}}")],
            width=8,
            thresholds=[(None, "red"), (1, "green")],
            mappings={"0": "down", "1": "up"},
        ),
        stat_panel(
            "5xx ratio (5m)",
            "Share of requests answered with a server error over the last 5 minutes, per "
            "service (recording rule job:http_server_request_errors:ratio_rate5m; probes and "
            "/metrics left out).",
            "percentunit",
            [
                Query(
                    'job:http_server_request_errors:ratio_rate5m{job=~"$service"}',
                    "{{job}}",
                    instant=True,
                )
            ],
            width=8,
            thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")],
        ),
    ]
    red = [
        timeseries_panel(
            "Request rate by service and route",
            "Requests per second answered, by service and route template (probes, /metrics "
            "and admin routes left out).",
            "reqps",
            [
                Query(
                    f"sum by (job, http_route) (rate({REQUESTS}[$__rate_interval]))",
                    "{{job}} {{http_route}}",
                )
            ],
            stack=True,
        ),
        timeseries_panel(
            "Error ratio by service",
            "Share of requests answered with 5xx (server errors) and 4xx (rejected input), by "
            "service. 4xx is the client's problem, 5xx is ours; the availability SLO counts 5xx.",
            "percentunit",
            [
                Query(
                    f'(sum by (job) (rate({REQUESTS[:-1]}, http_response_status_code=~"5.."}}[$__rate_interval])) '
                    f"or 0 * sum by (job) (rate({REQUESTS}[$__rate_interval]))) "
                    f"/ sum by (job) (rate({REQUESTS}[$__rate_interval]))",
                    "5xx {{job}}",
                ),
                Query(
                    f'(sum by (job) (rate({REQUESTS[:-1]}, http_response_status_code=~"4.."}}[$__rate_interval])) '
                    f"or 0 * sum by (job) (rate({REQUESTS}[$__rate_interval]))) "
                    f"/ sum by (job) (rate({REQUESTS}[$__rate_interval]))",
                    "4xx {{job}}",
                ),
            ],
            minimum=0,
        ),
        timeseries_panel(
            "Latency p50 / p95 / p99 by service",
            "Server-side request duration percentiles per service, from the "
            "http_server_request_duration_seconds histogram. Exemplars (dots) link to the "
            "trace in Jaeger. The dashed line is the 200 ms p95 alert threshold.",
            "s",
            [
                Query(_quantile(0.5, "job"), "p50 {{job}}", exemplar=True),
                Query(_quantile(0.95, "job"), "p95 {{job}}", exemplar=True),
                Query(_quantile(0.99, "job"), "p99 {{job}}", exemplar=True),
            ],
            thresholds=[(None, "green"), (0.2, "red")],
        ),
        timeseries_panel(
            "Latency p95 by route",
            "95th percentile of request duration per service and route template. "
            "Exemplars link to the trace in Jaeger.",
            "s",
            [Query(_quantile(0.95, "job, http_route"), "{{job}} {{http_route}}", exemplar=True)],
        ),
        timeseries_panel(
            "In-flight requests",
            "Requests being served right now, per service (http_server_active_requests); "
            "the signal the in-flight autoscaling variant scales on.",
            "short",
            [Query('sum by (job) (http_server_active_requests{job=~"$service"})', "{{job}}")],
        ),
        timeseries_panel(
            "Downstream calls from the edge by outcome",
            "Calls from preprocess to the classifier and postprocess per second, by outcome "
            "(ok, unavailable, timeout, error).",
            "reqps",
            [
                Query(
                    "sum by (peer_service, outcome) "
                    "(rate(http_client_request_duration_seconds_count[$__rate_interval]))",
                    "{{peer_service}} {{outcome}}",
                )
            ],
        ),
        timeseries_panel(
            "Downstream call latency p95",
            "95th percentile of the edge's calls to each downstream service, network included. "
            "Exemplars link to the trace in Jaeger.",
            "s",
            [
                Query(
                    "histogram_quantile(0.95, sum by (peer_service, le) "
                    "(rate(http_client_request_duration_seconds_bucket[$__rate_interval])))",
                    "{{peer_service}}",
                    exemplar=True,
                )
            ],
        ),
    ]
    resources = [
        timeseries_panel(
            "Process CPU",
            "CPU time each service process uses per second (1 = one full core), from "
            "process_cpu_seconds_total.",
            "percentunit",
            [
                Query(
                    'sum by (job) (rate(process_cpu_seconds_total{job=~"$service"}[$__rate_interval]))',
                    "{{job}}",
                )
            ],
        ),
        timeseries_panel(
            "Process resident memory",
            "Resident set size of each service process (process_resident_memory_bytes).",
            "bytes",
            [Query('sum by (job) (process_resident_memory_bytes{job=~"$service"})', "{{job}}")],
        ),
    ]
    log_lines = [
        logs_panel(
            "Log lines",
            "The selected services' JSON log lines in Loki, newest first (Kubernetes mode: "
            "Fluent Bit ships them with the labels namespace, app, container and level). INFO "
            "lines inside a request are sampled with the traces; WARNING and ERROR lines are "
            "all kept. Open a line: its trace_id links to the trace in Jaeger.",
            f'{{{LOG_STREAMS}, app=~"$service"}} | json',
        )
    ]
    return dashboard(
        UID,
        "Servescope / Service overview",
        "Rate, errors and duration (RED) of the three Servescope services, per service and "
        "route, with in-flight requests, process resources and the services' log lines.",
        [
            ("Health", health),
            ("Requests (RED)", red),
            ("Process resources", resources),
            ("Logs", log_lines),
        ],
        variables=[
            query_variable(
                "service",
                "Service",
                f'label_values(http_server_request_duration_seconds_count{{job=~"{SERVICES_RE}"}}, job)',
            )
        ],
    )
