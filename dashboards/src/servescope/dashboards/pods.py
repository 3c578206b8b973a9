"""Pods and resources (Kubernetes mode): CPU against requests and limits, throttling, memory
working set against RSS, cache and the limit, restarts, OOM kills, HPA replicas.

The series come from the kubelet's cAdvisor and kube-state-metrics (kube-prometheus-stack);
in local mode from `servescope up`'s own exporter (tools/cli/.../local/exporter.py), which
publishes the same names and labels from each service's cgroup and its supervisor. Only the
HPA panel stays empty locally (no HorizontalPodAutoscaler there).
"""

from __future__ import annotations

from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard

from servescope.dashboards.common import (
    SERVICES_RE,
    Query,
    dashboard,
    query_variable,
    stat_panel,
    timeseries_panel,
)

UID = "servescope-pods"
POD = 'namespace="$namespace", container=~"$container"'
KSM = f'job="kube-state-metrics", {POD}'
CADVISOR = f'{POD}, image!=""'


def _resource(kind: str, resource: str) -> str:
    return f'sum by (pod, container) (kube_pod_container_resource_{kind}{{{KSM}, resource="{resource}"}})'


def build(root: Path) -> Dashboard:
    cpu = [
        timeseries_panel(
            "CPU use against requests and limits",
            "CPU each container uses (cores, from cAdvisor's container_cpu_usage_seconds_total) "
            "with its request and limit from kube-state-metrics. Use above the request is "
            "borrowed; at the limit the container is throttled.",
            "short",
            [
                Query(
                    f"sum by (pod, container) (rate(container_cpu_usage_seconds_total{{{CADVISOR}}}[$__rate_interval]))",
                    "used {{pod}}",
                ),
                Query(_resource("requests", "cpu"), "request {{pod}}"),
                Query(_resource("limits", "cpu"), "limit {{pod}}"),
            ],
        ),
        timeseries_panel(
            "CPU throttling",
            "Share of CFS periods in which the container was throttled (it hit its CPU limit); "
            "above a few percent, latency suffers before CPU use looks high.",
            "percentunit",
            [
                Query(
                    "sum by (pod, container) (rate(container_cpu_cfs_throttled_periods_total"
                    f"{{{CADVISOR}}}[$__rate_interval])) / sum by (pod, container) "
                    f"(rate(container_cpu_cfs_periods_total{{{CADVISOR}}}[$__rate_interval]))",
                    "{{pod}}",
                )
            ],
            thresholds=[(None, "green"), (0.25, "red")],
        ),
    ]
    memory = [
        timeseries_panel(
            "Memory: working set, RSS, cache and the limit",
            "Working set (usage minus inactive page cache: what the kubelet evicts on and the "
            "OOM killer weighs against the limit), RSS (anonymous memory) and page cache, with "
            "the memory limit. A container is OOMKilled when working set reaches the limit, "
            "even if RSS looks small.",
            "bytes",
            [
                Query(
                    f"sum by (pod, container) (container_memory_working_set_bytes{{{CADVISOR}}})",
                    "working set {{pod}}",
                ),
                Query(
                    f"sum by (pod, container) (container_memory_rss{{{CADVISOR}}})", "rss {{pod}}"
                ),
                Query(
                    f"sum by (pod, container) (container_memory_cache{{{CADVISOR}}})",
                    "cache {{pod}}",
                ),
                Query(_resource("limits", "memory"), "limit {{pod}}"),
            ],
            width=16,
        ),
        timeseries_panel(
            "Working set as a share of the limit",
            "Working set divided by the memory limit; ServescopeContainerMemoryNearLimit "
            "opens a ticket above 90% for 15 minutes.",
            "percentunit",
            [
                Query(
                    f"max by (pod, container) (container_memory_working_set_bytes{{{CADVISOR}}}) "
                    f'/ max by (pod, container) (kube_pod_container_resource_limits{{{KSM}, resource="memory"}})',
                    "{{pod}}",
                )
            ],
            width=8,
            thresholds=[(None, "green"), (0.9, "red")],
            maximum=1,
        ),
    ]
    lifecycle = [
        timeseries_panel(
            "Restarts (1h)",
            "Container restarts over the last hour (kube_pod_container_status_restarts_total).",
            "short",
            [
                Query(
                    f"sum by (pod, container) (increase(kube_pod_container_status_restarts_total{{{KSM}}}[1h]))",
                    "{{pod}}",
                )
            ],
            width=8,
        ),
        stat_panel(
            "Last termination was an OOM kill",
            "Containers whose last termination reason is OOMKilled "
            "(kube_pod_container_status_last_terminated_reason).",
            "short",
            [
                Query(
                    # `or vector(0)`: 0, not "No data", when nothing was ever OOM killed.
                    "sum(kube_pod_container_status_last_terminated_reason"
                    f'{{{KSM}, reason="OOMKilled"}}) or vector(0)',
                    "containers",
                )
            ],
            width=4,
            height=8,
            thresholds=[(None, "green"), (1, "red")],
        ),
        timeseries_panel(
            "OOM events",
            "Out-of-memory kills per container over 10-minute windows, from cAdvisor "
            "(container_oom_events_total).",
            "short",
            [
                Query(
                    f"sum by (pod, container) (increase(container_oom_events_total{{{CADVISOR}}}[10m]))",
                    "{{pod}}",
                )
            ],
            width=12,
        ),
        timeseries_panel(
            "HPA replicas",
            "Current and desired replicas of each HorizontalPodAutoscaler, with its minimum and "
            "maximum (kube-state-metrics). Desired pinned at the maximum means the HPA can "
            "scale no further.",
            "short",
            [
                Query(
                    'kube_horizontalpodautoscaler_status_current_replicas{namespace="$namespace"}',
                    "current {{horizontalpodautoscaler}}",
                ),
                Query(
                    'kube_horizontalpodautoscaler_status_desired_replicas{namespace="$namespace"}',
                    "desired {{horizontalpodautoscaler}}",
                ),
                Query(
                    'kube_horizontalpodautoscaler_spec_min_replicas{namespace="$namespace"}',
                    "min {{horizontalpodautoscaler}}",
                ),
                Query(
                    'kube_horizontalpodautoscaler_spec_max_replicas{namespace="$namespace"}',
                    "max {{horizontalpodautoscaler}}",
                ),
            ],
            width=24,
        ),
    ]
    return dashboard(
        UID,
        "Servescope / Pods and resources",
        "The Servescope containers' CPU and memory against their requests "
        "and limits, throttling, restarts, OOM kills and autoscaling (cAdvisor and "
        "kube-state-metrics series; in local mode from `servescope up`'s exporter, HPA aside).",
        [("CPU", cpu), ("Memory", memory), ("Restarts and scaling", lifecycle)],
        variables=[
            query_variable(
                "namespace",
                "Namespace",
                f'label_values(kube_pod_container_info{{container=~"{SERVICES_RE}"}}, namespace)',
                include_all=False,
            ),
            query_variable(
                "container",
                "Container",
                f'label_values(kube_pod_container_info{{namespace="$namespace", container=~"{SERVICES_RE}"}}, container)',
            ),
        ],
    )
