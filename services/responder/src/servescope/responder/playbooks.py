"""Playbooks: the diagnostic queries an on-call engineer runs first, per alert category.

Each alert of deploy/prometheus/rules carries a `category` label (latency, errors,
availability, traffic, saturation, model); its playbook is the list of PromQL checks below,
the same ones its runbook lists. A test checks that every query reads only series the
telemetry contract (or Kubernetes) declares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from servescope.responder.prometheus import Sample
from servescope.telemetry.pipeline import PIPELINE

# The request path's jobs (and containers), and the routes of probes and scrapes that are
# never the story: the pipeline's facts, from the telemetry contract.
SERVICES = PIPELINE.service_names
JOBS = PIPELINE.job_regex
PROBES = PIPELINE.probe_regex

# The alert categories the rules use; anything else is "other" (the metrics' label values).
CATEGORIES = ("latency", "errors", "availability", "traffic", "saturation", "model")


@dataclass(frozen=True)
class Check:
    """One diagnostic query. `{window}` is the diagnosis window, `{ns}` the namespace."""

    key: str
    title: str
    promql: str


@dataclass
class CheckResult:
    """What one check returned: its samples, or the error that stopped it."""

    key: str
    title: str
    query: str
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None


LATENCY_CHECKS = (
    Check(
        "stage_p95",
        "p95 by pipeline stage at the edge",
        "histogram_quantile(0.95, sum by (stage, le) (rate("
        'servescope_stage_duration_seconds_bucket{{stage!=""{ns}}}[{window}])))',
    ),
    Check(
        "server_p95",
        "p95 of each service's own requests (probes left out)",
        "histogram_quantile(0.95, sum by (job, le) (rate("
        f'http_server_request_duration_seconds_bucket{{{{job=~"{JOBS}", http_route!~"{PROBES}"{{ns}}}}}}'
        "[{window}])))",
    ),
    Check(
        "client_p95",
        "p95 of the edge's calls to its downstreams, as the edge sees them",
        "histogram_quantile(0.95, sum by (peer_service, le) (rate("
        'http_client_request_duration_seconds_bucket{{outcome!=""{ns}}}[{window}])))',
    ),
    Check(
        "inference_p95",
        "p95 of onnxruntime alone in the classifier",
        "histogram_quantile(0.95, sum by (le) (rate("
        'servescope_inference_duration_seconds_bucket{{job!=""{ns}}}[{window}])))',
    ),
    Check(
        "faults",
        "fault injections that slow a step (delay, cpu) switched on",
        'servescope_fault_value{{kind=~"delay|cpu", step!=""{ns}}} > 0',
    ),
    Check(
        "in_flight",
        "requests in flight per service",
        f'sum by (job) (http_server_active_requests{{{{job=~"{JOBS}"{{ns}}}}}})',
    ),
    Check(
        "cpu",
        "CPU per service (cores)",
        f'sum by (job) (rate(process_cpu_seconds_total{{{{job=~"{JOBS}"{{ns}}}}}}[{{window}}]))',
    ),
)

ERROR_CHECKS = (
    Check(
        "error_ratio",
        "5xx ratio per service (probes left out)",
        "sum by (job) (rate(http_server_request_duration_seconds_count"
        f'{{{{job=~"{JOBS}", http_route!~"{PROBES}", http_response_status_code=~"5.."{{ns}}}}}}'
        "[{window}]))\n/\nsum by (job) (rate(http_server_request_duration_seconds_count"
        f'{{{{job=~"{JOBS}", http_route!~"{PROBES}"{{ns}}}}}}[{{window}}]))',
    ),
    Check(
        "errors_by_route",
        "5xx per second by route and status",
        "sum by (job, http_route, http_response_status_code) (rate("
        "http_server_request_duration_seconds_count"
        f'{{{{job=~"{JOBS}", http_response_status_code=~"5.."{{ns}}}}}}[{{window}}])) > 0',
    ),
    Check(
        "outbound_failures",
        "failed calls from the edge, by downstream and outcome (per second)",
        "sum by (peer_service, outcome) (rate("
        'http_client_request_duration_seconds_count{{outcome!="ok"{ns}}}[{window}])) > 0',
    ),
    Check(
        "rejected",
        "inputs refused, by reason (per second)",
        "sum by (job, reason) (rate("
        f'servescope_rejected_inputs_total{{{{job=~"{JOBS}"{{ns}}}}}}[{{window}}])) > 0',
    ),
    Check("up", "scrape health", f'up{{{{job=~"{JOBS}"{{ns}}}}}}'),
    Check("ready", "readiness", f'servescope_ready{{{{job=~"{JOBS}"{{ns}}}}}}'),
    Check(
        "faults",
        "fault injections switched on (any kind)",
        'servescope_fault_value{{kind!=""{ns}}} > 0',
    ),
)

AVAILABILITY_CHECKS = (
    Check("up", "scrape health", f'up{{{{job=~"{JOBS}"{{ns}}}}}}'),
    Check("ready", "readiness", f'servescope_ready{{{{job=~"{JOBS}"{{ns}}}}}}'),
    Check(
        "readiness_changes",
        "readiness changes in the last 15 minutes",
        f'changes(servescope_ready{{{{job=~"{JOBS}"{{ns}}}}}}[15m])',
    ),
    Check(
        "uptime",
        "seconds since each process started",
        f'time() - process_start_time_seconds{{{{job=~"{JOBS}"{{ns}}}}}}',
    ),
    Check(
        "request_rate",
        "requests per second per service (probes left out)",
        "sum by (job) (rate(http_server_request_duration_seconds_count"
        f'{{{{job=~"{JOBS}", http_route!~"{PROBES}"{{ns}}}}}}[{{window}}]))',
    ),
)

_CONTAINERS = f'container=~"{JOBS}"'
SATURATION_CHECKS = (
    Check(
        "restarts",
        "container restarts in the last 30 minutes",
        "increase(kube_pod_container_status_restarts_total"
        f'{{{{job="kube-state-metrics", {_CONTAINERS}{{ns}}}}}}[30m]) > 0',
    ),
    Check(
        "last_terminated",
        "last termination reason per container",
        "kube_pod_container_status_last_terminated_reason"
        f'{{{{job="kube-state-metrics", {_CONTAINERS}{{ns}}}}}} == 1',
    ),
    Check(
        "memory_limit",
        "memory limit (bytes)",
        "max by (namespace, pod, container) (kube_pod_container_resource_limits"
        f'{{{{job="kube-state-metrics", resource="memory", {_CONTAINERS}{{ns}}}}}})',
    ),
    Check(
        "working_set",
        "working set (bytes): RSS plus active page cache, what the kubelet weighs",
        "max by (namespace, pod, container) (container_memory_working_set_bytes"
        f'{{{{image!="", {_CONTAINERS}{{ns}}}}}})',
    ),
    Check(
        "rss",
        "RSS (bytes): anonymous memory, what the OOM killer cannot reclaim",
        "max by (namespace, pod, container) (container_memory_rss"
        f'{{{{image!="", {_CONTAINERS}{{ns}}}}}})',
    ),
    Check(
        "cache",
        "page cache (bytes): reclaimable file cache",
        "max by (namespace, pod, container) (container_memory_cache"
        f'{{{{image!="", {_CONTAINERS}{{ns}}}}}})',
    ),
    Check(
        "process_rss",
        "resident memory per process (bytes), as each service reports it",
        f'process_resident_memory_bytes{{{{job=~"{JOBS}"{{ns}}}}}}',
    ),
)

MODEL_CHECKS = (
    Check("drift", "input drift scores", 'servescope_input_drift_score{{signal!=""{ns}}}'),
    Check(
        "drift_window",
        "inputs in the drift window",
        'servescope_drift_window_inputs{{job!=""{ns}}}',
    ),
    Check(
        "mean_confidence",
        "mean calibrated confidence of the predictions",
        'sum(rate(servescope_prediction_confidence_ratio_sum{{job!=""{ns}}}[{window}]))\n/\n'
        'sum(rate(servescope_prediction_confidence_ratio_count{{job!=""{ns}}}[{window}]))',
    ),
    Check(
        "class_share",
        "share of predictions by class",
        'sum by (class_label) (rate(servescope_predictions_total{{job!=""{ns}}}[{window}]))\n'
        "/ ignoring (class_label) group_left\n"
        'sum(rate(servescope_predictions_total{{job!=""{ns}}}[{window}]))',
    ),
    Check("model_info", "the served model", 'servescope_model_info{{model_name!=""{ns}}}'),
    Check(
        "rejected",
        "inputs refused, by reason (per second)",
        "sum by (job, reason) (rate("
        f'servescope_rejected_inputs_total{{{{job=~"{JOBS}"{{ns}}}}}}[{{window}}])) > 0',
    ),
)

PLAYBOOKS: dict[str, tuple[Check, ...]] = {
    "latency": LATENCY_CHECKS,
    "errors": ERROR_CHECKS,
    "availability": AVAILABILITY_CHECKS,
    "traffic": AVAILABILITY_CHECKS,
    "saturation": SATURATION_CHECKS,
    "model": MODEL_CHECKS,
}
GENERIC_CHECKS = (AVAILABILITY_CHECKS[0], ERROR_CHECKS[0], LATENCY_CHECKS[0])


def playbook(category: str | None) -> tuple[Check, ...]:
    return PLAYBOOKS.get(category or "", GENERIC_CHECKS)


def render_check(check: Check, window: str, namespace: str | None = None) -> str:
    ns = f', namespace="{escape(namespace)}"' if namespace else ""
    return check.promql.format(window=window, ns=ns)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def category_of(category: str | None) -> str:
    """The alert's category as a bounded label value."""
    return category if category in CATEGORIES else "other"


def parse_duration(text: str) -> float:
    """A PromQL duration ('30s', '5m', '1h30m') in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)
