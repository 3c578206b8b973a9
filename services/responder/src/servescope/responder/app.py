"""Automated first response: an Alertmanager webhook receiver that writes incident notes.

For every alert Alertmanager delivers, `servescope responder` runs the diagnostic queries an
on-call engineer would run first (the alert's runbook lists the same ones) against
Prometheus: the slowest stage by p95 and any injected fault, error kinds and failing
downstream calls, restarts and memory, drift scores, depending on the alert's `category`.
It names the most likely culprit (service, stage, step), collects the trace ids of the
slowest or failing requests from the exemplars of the latency histograms
(/api/v1/query_exemplars), and writes an incident note, JSON and markdown, that links the
runbook and the traces. A resolve notification marks the note resolved.

It listens on 127.0.0.1 by default; every setting is a flag or a SERVESCOPE_RESPONDER_*
environment variable. Endpoints: POST /alerts (Alertmanager webhook, version 4),
GET /incidents, GET /incidents/{id}, GET /healthz.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from servescope.cli.paths import repo_root

log = structlog.get_logger("servescope.responder")

SERVICES = ("preprocess", "classifier", "postprocess")
JOBS = "preprocess|classifier|postprocess"
PROBES = "/metrics|/healthz|/readyz|/v2/health/.*|.*/ready|/admin/.*"

# Where each stage of the edge's pipeline runs, and what it does.
STAGE_SERVICE = {
    "decode": "preprocess",
    "preprocess": "preprocess",
    "infer": "classifier",
    "postprocess": "postprocess",
}
STAGE_MEANING = {
    "decode": "validate and decode the upload",
    "preprocess": "resize and normalise into the model's tensor",
    "infer": "the call to the classifier",
    "postprocess": "the call to postprocess",
    "end_to_end": "the whole prediction",
}
# Fault-injection steps (servescope_fault_delay_seconds{step}) and the stage they slow.
STEP_STAGE = {
    "decode": "decode",
    "resize": "preprocess",
    "normalise": "preprocess",
    "inference": "infer",
    "softmax": "postprocess",
}
# Deeper services first: when several fail, the deepest failure explains the others.
DEPTH = {"classifier": 0, "postprocess": 1, "preprocess": 2}
DRIFT_THRESHOLDS = {"pixel_psi": 0.25, "class_psi": 0.25, "mean_intensity_shift": 0.1}


class ResponderSettings(BaseSettings):
    """Every setting, from flags or SERVESCOPE_RESPONDER_* variables."""

    model_config = SettingsConfigDict(env_prefix="SERVESCOPE_RESPONDER_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to listen on; containers set 0.0.0.0.")
    port: int = Field(9095, ge=0, le=65535)
    prometheus_url: str = Field("http://127.0.0.1:9090", description="Prometheus to query.")
    incident_dir: Path = Field(Path(".run/incidents"), description="Where notes are written.")
    window: str = Field("5m", description="Range of the diagnostic queries (PromQL duration).")
    runbook_base_url: str | None = Field(
        None,
        description="Base URL the relative runbook_url annotations are resolved against; "
        "unset: the runbook files of this checkout.",
    )
    trace_url_template: str | None = Field(
        None, description="Link for a trace, with {trace_id}; unset: ids only."
    )
    query_timeout_seconds: float = Field(5.0, gt=0)
    max_traces: int = Field(5, ge=0, le=50)
    log_level: str = "info"


# --- Prometheus ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One diagnostic query. `{window}` is the diagnosis window, `{ns}` the namespace."""

    key: str
    title: str
    promql: str


@dataclass
class Sample:
    labels: dict[str, str]
    value: float


@dataclass
class CheckResult:
    key: str
    title: str
    query: str
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None


class Prometheus:
    def __init__(self, session: aiohttp.ClientSession, url: str, timeout: float) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _get(self, path: str, params: Mapping[str, str]) -> Any:
        async with self.session.get(
            self.url + path, params=params, timeout=self.timeout
        ) as response:
            body = orjson.loads(await response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    async def query(self, promql: str, at: float) -> list[Sample]:
        data = await self._get("/api/v1/query", {"query": promql, "time": f"{at:.3f}"})
        if data.get("resultType") != "vector":
            return []
        return [Sample(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]

    async def exemplars(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        data = await self._get(
            "/api/v1/query_exemplars",
            {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}"},
        )
        found: list[dict[str, Any]] = []
        for series in data or []:
            for exemplar in series.get("exemplars") or []:
                found.append(
                    {
                        "series": dict(series.get("seriesLabels") or {}),
                        "labels": dict(exemplar.get("labels") or {}),
                        "value": float(exemplar["value"]),
                        "timestamp": float(exemplar["timestamp"]),
                    }
                )
        return found


# --- playbooks: what to ask Prometheus for each kind of alert ------------------------------

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
        "fault injections switched on",
        'servescope_fault_delay_seconds{{step!=""{ns}}} > 0',
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
        'servescope_rejected_inputs_total{{reason!=""{ns}}}[{window}])) > 0',
    ),
    Check("up", "scrape health", f'up{{{{job=~"{JOBS}"{{ns}}}}}}'),
    Check("ready", "readiness", 'servescope_ready{{job!=""{ns}}}'),
    Check(
        "faults",
        "fault injections switched on",
        'servescope_fault_delay_seconds{{step!=""{ns}}} > 0',
    ),
)

AVAILABILITY_CHECKS = (
    Check("up", "scrape health", f'up{{{{job=~"{JOBS}"{{ns}}}}}}'),
    Check("ready", "readiness", 'servescope_ready{{job!=""{ns}}}'),
    Check(
        "readiness_changes",
        "readiness changes in the last 15 minutes",
        'changes(servescope_ready{{job!=""{ns}}}[15m])',
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

_CONTAINERS = 'container=~"preprocess|classifier|postprocess"'
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
        'servescope_rejected_inputs_total{{reason!=""{ns}}}[{window}])) > 0',
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
    ns = f', namespace="{_escape(namespace)}"' if namespace else ""
    return check.promql.format(window=window, ns=ns)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


# --- culprits ------------------------------------------------------------------------------


@dataclass
class Culprit:
    service: str | None
    stage: str | None = None
    step: str | None = None
    summary: str = ""
    evidence: list[str] = field(default_factory=list)


Results = Mapping[str, CheckResult]


def _values(results: Results, key: str, label: str) -> dict[str, float]:
    result = results.get(key)
    if result is None:
        return {}
    return {s.labels.get(label, ""): s.value for s in result.samples if math.isfinite(s.value)}


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def latency_culprit(results: Results, alert_service: str | None) -> Culprit:
    stages = _values(results, "stage_p95", "stage")
    end_to_end = stages.pop("end_to_end", None)
    stages = {s: v for s, v in stages.items() if s in STAGE_SERVICE}
    if not stages:
        return Culprit(alert_service, summary="no per-stage latency in the window")
    slowest = max(stages, key=lambda s: stages[s])
    service = STAGE_SERVICE[slowest]
    evidence = [
        f"stage {s} p95 {_seconds(v)}" for s, v in sorted(stages.items(), key=lambda i: -i[1])
    ]
    if end_to_end is not None:
        evidence.append(f"end to end p95 {_seconds(end_to_end)}")
    culprit = Culprit(service, slowest, evidence=evidence)
    # An injected delay in a step of that stage, in that service, is the step.
    faults = [
        (s.value, s.labels.get("step", ""))
        for s in (results["faults"].samples if "faults" in results else [])
        if s.labels.get("job", service) == service
        and STEP_STAGE.get(s.labels.get("step", "")) == slowest
    ]
    if faults:
        delay, step = max(faults)
        culprit.step = step
        evidence.append(f"fault injection on: step {step} delayed by {_seconds(delay)}")
    server = _values(results, "server_p95", "job")
    client = _values(results, "client_p95", "peer_service")
    detail = ""
    if slowest in ("infer", "postprocess") and service in client and service in server:
        evidence.append(
            f"{service} answers in {_seconds(server[service])} (p95) itself; the edge waits "
            f"{_seconds(client[service])} for it"
        )
        if server[service] < 0.5 * client[service]:
            culprit.step = culprit.step or "network"
            detail = (
                f"; {service} itself is fast, so the time is lost between the services "
                "(network, DNS, connection pool)"
            )
        elif slowest == "infer":
            inference = _values(results, "inference_p95", "")
            model = inference.get("")
            if model is not None and model > 0.5 * server[service]:
                culprit.step = culprit.step or "inference"
                detail = f"; onnxruntime alone takes {_seconds(model)} (p95): the model"
    share = ""
    if end_to_end:
        share = f", {100 * stages[slowest] / end_to_end:.0f}% of the end-to-end p95"
    step = f", step {culprit.step}" if culprit.step and culprit.step != "network" else ""
    culprit.summary = (
        f"{service}: stage {slowest} ({STAGE_MEANING[slowest]}{step}) is the slowest, "
        f"p95 {_seconds(stages[slowest])}{share}{detail}"
    )
    return culprit


def _deepest(services: Sequence[str]) -> str:
    return min(services, key=lambda s: DEPTH.get(s, 99))


def errors_culprit(results: Results, alert_service: str | None) -> Culprit:
    down = sorted(
        {s.labels.get("job", "") for s in results["up"].samples if s.value == 0}
        if "up" in results
        else set()
    )
    not_ready = sorted(
        {s.labels.get("job", "") for s in results["ready"].samples if s.value == 0}
        if "ready" in results
        else set()
    )
    outbound = {
        (s.labels.get("peer_service", ""), s.labels.get("outcome", "")): s.value
        for s in (results["outbound_failures"].samples if "outbound_failures" in results else [])
    }
    ratios = {j: v for j, v in _values(results, "error_ratio", "job").items() if v > 0}
    evidence = [f"{job} is down (scrape failed)" for job in down]
    evidence += [f"{job} is not ready" for job in not_ready]
    evidence += [
        f"edge calls to {peer} fail: {outcome} ({rate:.2f}/s)"
        for (peer, outcome), rate in sorted(outbound.items(), key=lambda i: -i[1])
    ]
    evidence += [
        f"{job} 5xx ratio {ratio:.1%}" for job, ratio in sorted(ratios.items(), key=lambda i: -i[1])
    ]
    if down or not_ready:
        service = _deepest([j for j in down + not_ready if j])
        state = "down" if service in down else "not ready"
        return Culprit(service, summary=f"{service} is {state}", evidence=evidence)
    if outbound:
        (peer, outcome), _ = max(outbound.items(), key=lambda i: i[1])
        own = ratios.get(peer)
        detail = f"; its own 5xx ratio is {own:.1%}" if own else ""
        return Culprit(
            peer,
            stage="infer" if peer == "classifier" else "postprocess",
            step=outcome,
            summary=f"{peer}: the edge's calls to it fail ({outcome}){detail}",
            evidence=evidence,
        )
    if ratios:
        failing = [j for j, v in ratios.items() if v >= 0.01] or list(ratios)
        service = _deepest(failing)
        routes = [
            s.labels
            for s in (results["errors_by_route"].samples if "errors_by_route" in results else [])
            if s.labels.get("job") == service
        ]
        where = (
            f" on {routes[0].get('http_route')} ({routes[0].get('http_response_status_code')})"
            if routes
            else ""
        )
        return Culprit(
            service,
            summary=f"{service} answers {ratios[service]:.1%} 5xx{where}",
            evidence=evidence,
        )
    return Culprit(alert_service, summary="no server errors in the window", evidence=evidence)


def availability_culprit(results: Results, alert_service: str | None, alertname: str) -> Culprit:
    service = alert_service
    evidence: list[str] = []
    for sample in results["up"].samples if "up" in results else []:
        if sample.value == 0:
            evidence.append(f"{sample.labels.get('job')} {sample.labels.get('instance')} is down")
    for sample in results["ready"].samples if "ready" in results else []:
        if sample.value == 0:
            evidence.append(f"{sample.labels.get('job')} is not ready")
    for job, changes in _values(results, "readiness_changes", "job").items():
        if changes:
            evidence.append(f"{job} readiness changed {changes:.0f} times in 15 minutes")
    for job, uptime in _values(results, "uptime", "job").items():
        if uptime < 900:
            evidence.append(f"{job} restarted {uptime:.0f} s ago")
    rates = _values(results, "request_rate", "job")
    if alertname == "ServescopeNoTraffic":
        return Culprit(
            service or "preprocess",
            step="ingress",
            summary="no requests reach the edge: look upstream of preprocess (ingress, "
            "load balancer, DNS, the clients)",
            evidence=evidence + [f"{job} {rate:.2f} requests/s" for job, rate in rates.items()],
        )
    state = "is down" if any("is down" in e for e in evidence) else "is unstable"
    return Culprit(service, summary=f"{service} {state}", evidence=evidence)


def saturation_culprit(results: Results, labels: Mapping[str, str]) -> Culprit:
    container = labels.get("container") or labels.get("service")
    pod = labels.get("pod")

    def value(key: str) -> float | None:
        for sample in results[key].samples if key in results else []:
            if sample.labels.get("container") == container and (
                pod is None or sample.labels.get("pod") == pod
            ):
                return sample.value
        return None

    limit, working_set, rss, cache = (
        value("memory_limit"),
        value("working_set"),
        value("rss"),
        value("cache"),
    )
    evidence = []
    for sample in results["last_terminated"].samples if "last_terminated" in results else []:
        if sample.labels.get("container") == container:
            evidence.append(
                f"{sample.labels.get('pod')} last terminated: {sample.labels.get('reason')}"
            )
    for sample in results["restarts"].samples if "restarts" in results else []:
        if sample.labels.get("container") == container:
            evidence.append(
                f"{sample.labels.get('pod')} restarted {sample.value:.0f} times in 30 minutes"
            )
    summary = f"container {container}"
    if limit and rss is not None and working_set is not None:
        mib = 1024 * 1024
        evidence.append(
            f"limit {limit / mib:.0f} MiB, working set {working_set / mib:.0f} MiB, "
            f"RSS {rss / mib:.0f} MiB, page cache {(cache or 0) / mib:.0f} MiB"
        )
        if rss >= 0.8 * limit:
            summary += ": anonymous memory (RSS) is near the limit; an OOM kill is likely"
        elif working_set >= 0.8 * limit:
            summary += ": the working set is high but mostly page cache, which is reclaimable"
    return Culprit(container, step="memory" if limit else None, summary=summary, evidence=evidence)


def model_culprit(results: Results, alert_service: str | None) -> Culprit:
    drift = _values(results, "drift", "signal")
    drifted = [s for s, v in drift.items() if v > DRIFT_THRESHOLDS.get(s, math.inf)]
    evidence = [f"{signal} {value:.3f}" for signal, value in sorted(drift.items())]
    confidence = _values(results, "mean_confidence", "").get("")
    if confidence is not None:
        evidence.append(f"mean confidence {confidence:.3f}")
    versions = {
        (s.labels.get("model_name"), s.labels.get("model_version"))
        for s in (results["model_info"].samples if "model_info" in results else [])
    }
    if len(versions) > 1:
        evidence.append(
            "several model versions serve at once: "
            + ", ".join(f"{n} v{v}" for n, v in sorted(versions, key=str))
        )
    if drifted:
        return Culprit(
            "classifier",
            stage="inputs",
            step=",".join(sorted(drifted)),
            summary="the inputs drifted from the training data ("
            + ", ".join(f"{s} {drift[s]:.3f}" for s in sorted(drifted))
            + "): the cause is upstream, in what clients send",
            evidence=evidence,
        )
    if len(versions) > 1:
        return Culprit(
            "classifier",
            stage="model",
            summary="a model change: several versions are served",
            evidence=evidence,
        )
    return Culprit(
        alert_service,
        stage="model",
        summary="no input drift: suspect a model or preprocessing change",
        evidence=evidence,
    )


def find_culprit(alert: Mapping[str, Any], results: Results) -> Culprit:
    labels: Mapping[str, str] = alert.get("labels") or {}
    category = labels.get("category")
    service = labels.get("service") or labels.get("job")
    if category == "latency":
        return latency_culprit(results, service)
    if category == "errors":
        return errors_culprit(results, service)
    if category in ("availability", "traffic"):
        return availability_culprit(results, service, labels.get("alertname", ""))
    if category == "saturation":
        return saturation_culprit(results, labels)
    if category == "model":
        return model_culprit(results, service)
    return Culprit(service, summary="no playbook for this alert's category; see its runbook")


def exemplar_query(alert: Mapping[str, Any], culprit: Culprit) -> str:
    labels: Mapping[str, str] = alert.get("labels") or {}
    if labels.get("category") == "errors" and culprit.service:
        return (
            "http_server_request_duration_seconds_bucket"
            f'{{job="{_escape(culprit.service)}", http_response_status_code=~"5.."}}'
        )
    stage = culprit.stage if culprit.stage in STAGE_MEANING else "end_to_end"
    return f'servescope_stage_duration_seconds_bucket{{stage="{stage}"}}'


# --- incident notes ------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """A PromQL duration ('30s', '5m', '1h30m') in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def _timestamp(text: str | None) -> float | None:
    if not text or text.startswith("0001-"):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def fingerprint(alert: Mapping[str, Any]) -> str:
    given = alert.get("fingerprint")
    if isinstance(given, str) and given:
        return given
    labels = sorted((alert.get("labels") or {}).items())
    return hashlib.sha256(orjson.dumps(labels)).hexdigest()[:16]


def incident_id(alert: Mapping[str, Any]) -> str:
    started = _timestamp(alert.get("startsAt")) or time.time()
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%SZ")
    name = re.sub(
        r"[^A-Za-z0-9_-]", "_", str((alert.get("labels") or {}).get("alertname", "alert"))
    )
    return f"{stamp}-{name}-{fingerprint(alert)[:12]}"


def runbook_link(annotation: str | None, base_url: str | None) -> dict[str, Any] | None:
    if not annotation:
        return None
    if re.match(r"^[a-z][a-z0-9+.-]*://", annotation):
        return {"annotation": annotation, "url": annotation, "exists": None}
    relative = annotation.lstrip("/")
    path = repo_root() / relative
    url = base_url.rstrip("/") + "/" + relative if base_url else str(path)
    return {"annotation": annotation, "url": url, "exists": path.is_file()}


def render_markdown(note: Mapping[str, Any]) -> str:
    labels: Mapping[str, str] = note["labels"]
    annotations: Mapping[str, str] = note["annotations"]
    culprit: Mapping[str, Any] = note["culprit"]
    lines = [
        f"# {note['status'].upper()}: {note['alertname']} ({labels.get('severity', 'no severity')})",
        "",
        "| | |",
        "|---|---|",
        f"| status | {note['status']} since {note['starts_at']}"
        + (f", resolved at {note['resolved_at']}" if note.get("resolved_at") else "")
        + " |",
        f"| service | {labels.get('service', labels.get('job', '?'))} |",
    ]
    if annotations.get("summary"):
        lines.append(f"| summary | {annotations['summary']} |")
    runbook = note.get("runbook")
    if runbook:
        missing = " (missing!)" if runbook.get("exists") is False else ""
        lines.append(f"| runbook | [{runbook['annotation']}]({runbook['url']}){missing} |")
    else:
        lines.append("| runbook | none: this alert has no runbook_url |")
    lines += ["", f"> {annotations.get('description', '(no description)')}", ""]
    lines += ["## Likely culprit", ""]
    where = [f"**{culprit.get('service') or 'unknown'}**"]
    if culprit.get("stage"):
        where.append(f"stage `{culprit['stage']}`")
    if culprit.get("step"):
        where.append(f"step `{culprit['step']}`")
    lines.append(", ".join(where) + f": {culprit.get('summary', '')}")
    if culprit.get("evidence"):
        lines += ["", *[f"- {e}" for e in culprit["evidence"]]]
    lines += ["", "## Traces", ""]
    traces = note.get("traces") or []
    if traces:
        lines += [
            f"Slowest requests recorded as exemplars of `{note.get('exemplar_query')}`:",
            "",
            "| trace id | value | at |",
            "|---|---|---|",
        ]
        for trace in traces:
            ident = f"`{trace['trace_id']}`"
            if trace.get("url"):
                ident = f"[{ident}]({trace['url']})"
            lines.append(f"| {ident} | {trace['value']:g} | {trace['at']} |")
    else:
        lines.append(note.get("traces_error") or "No exemplar with a trace id in the window.")
    lines += ["", "## Diagnostics", "", f"Evaluated at {note['diagnosed_at']}.", ""]
    for check in note["diagnostics"]:
        lines += [f"### {check['title']}", "", "```promql", check["query"], "```", ""]
        if check.get("error"):
            lines += [f"Query failed: {check['error']}", ""]
        elif not check["samples"]:
            lines += ["No data.", ""]
        else:
            lines += ["| series | value |", "|---|---|"]
            for sample in check["samples"][:20]:
                series = ", ".join(f"{k}={v}" for k, v in sorted(sample["labels"].items()))
                lines.append(f"| {series or '{}'} | {sample['value']:.6g} |")
            lines.append("")
    lines += ["## Notifications", ""]
    lines += [
        f"- {n['status']} at {n['received_at']} via {n.get('receiver') or '?'}"
        for n in note["notifications"]
    ]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class Responder:
    settings: ResponderSettings
    session: aiohttp.ClientSession
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.prometheus = Prometheus(
            self.session, self.settings.prometheus_url, self.settings.query_timeout_seconds
        )
        self.window_seconds = parse_duration(self.settings.window)
        self.settings.incident_dir.mkdir(parents=True, exist_ok=True)

    def note_path(self, ident: str, suffix: str) -> Path:
        return self.settings.incident_dir / f"{ident}.{suffix}"

    def submit(self, payload: Mapping[str, Any]) -> int:
        receiver = str(payload.get("receiver") or "")
        alerts = [a for a in payload.get("alerts") or [] if isinstance(a, dict)]
        for alert in alerts:
            task = asyncio.create_task(self.handle(alert, receiver))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(alerts)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def handle(self, alert: Mapping[str, Any], receiver: str) -> None:
        ident = incident_id(alert)
        lock = self._locks.setdefault(ident, asyncio.Lock())
        async with lock:
            try:
                await self._handle(alert, receiver, ident)
            except Exception:
                log.exception("incident_note_failed", incident=ident)

    async def _handle(self, alert: Mapping[str, Any], receiver: str, ident: str) -> None:
        status = "resolved" if alert.get("status") == "resolved" else "firing"
        notification = {"status": status, "received_at": _iso(time.time()), "receiver": receiver}
        json_path = self.note_path(ident, "json")
        note: dict[str, Any]
        if json_path.exists():
            note = orjson.loads(json_path.read_bytes())
            note["notifications"].append(notification)
        else:
            note = await self.diagnose(alert, ident)
            note["notifications"] = [notification]
        note["status"] = status
        if status == "resolved":
            note["resolved_at"] = _iso(_timestamp(alert.get("endsAt")) or time.time())
        else:
            note["resolved_at"] = None
        # Markdown first: whoever polls the JSON finds the markdown already up to date.
        _write_atomic(self.note_path(ident, "md"), render_markdown(note).encode())
        _write_atomic(json_path, orjson.dumps(note, option=orjson.OPT_INDENT_2) + b"\n")
        log.info(
            "incident_note_written",
            incident=ident,
            alertname=note["alertname"],
            status=status,
            culprit_service=note["culprit"]["service"],
            culprit_stage=note["culprit"]["stage"],
            path=str(json_path),
        )

    async def diagnose(self, alert: Mapping[str, Any], ident: str) -> dict[str, Any]:
        labels: dict[str, str] = dict(alert.get("labels") or {})
        annotations: dict[str, str] = dict(alert.get("annotations") or {})
        now = time.time()
        checks = playbook(labels.get("category"))
        queries = [render_check(c, self.settings.window, labels.get("namespace")) for c in checks]
        outcomes = await asyncio.gather(
            *(self.prometheus.query(q, now) for q in queries), return_exceptions=True
        )
        results: dict[str, CheckResult] = {}
        for check, query, outcome in zip(checks, queries, outcomes, strict=True):
            result = CheckResult(check.key, check.title, query)
            if isinstance(outcome, BaseException):
                result.error = f"{type(outcome).__name__}: {outcome}"
            else:
                result.samples = outcome
            results[check.key] = result
        culprit = find_culprit(alert, results)
        if results and all(r.error for r in results.values()):
            first = next(iter(results.values())).error
            culprit.summary = (
                f"Prometheus at {self.settings.prometheus_url} did not answer ({first}); "
                "run the runbook's queries by hand"
            )
        exemplars_query = exemplar_query(alert, culprit)
        traces, traces_error = await self.traces(alert, exemplars_query, now)
        return {
            "id": ident,
            "alertname": labels.get("alertname", ""),
            "status": "firing",
            "labels": labels,
            "annotations": annotations,
            "starts_at": alert.get("startsAt"),
            "resolved_at": None,
            "fingerprint": fingerprint(alert),
            "generator_url": alert.get("generatorURL"),
            "runbook": runbook_link(annotations.get("runbook_url"), self.settings.runbook_base_url),
            "culprit": asdict(culprit),
            "exemplar_query": exemplars_query,
            "traces": traces,
            "traces_error": traces_error,
            "diagnosed_at": _iso(now),
            "window": self.settings.window,
            "prometheus_url": self.settings.prometheus_url,
            "diagnostics": [asdict(r) for r in results.values()],
        }

    async def traces(
        self, alert: Mapping[str, Any], promql: str, now: float
    ) -> tuple[list[dict[str, Any]], str | None]:
        if not self.settings.max_traces:
            return [], None
        started = _timestamp(alert.get("startsAt")) or now
        start = min(started, now) - self.window_seconds
        try:
            exemplars = await self.prometheus.exemplars(promql, start, now)
        except Exception as exc:  # a note without traces is still a note
            return [], f"exemplar query failed: {type(exc).__name__}: {exc}"
        traces: list[dict[str, Any]] = []
        seen: set[str] = set()
        for exemplar in sorted(exemplars, key=lambda e: -e["value"]):
            trace_id = exemplar["labels"].get("trace_id")
            if not trace_id or trace_id in seen:
                continue
            seen.add(trace_id)
            template = self.settings.trace_url_template
            traces.append(
                {
                    "trace_id": trace_id,
                    "span_id": exemplar["labels"].get("span_id"),
                    "value": exemplar["value"],
                    "at": _iso(exemplar["timestamp"]),
                    "series": exemplar["series"],
                    "url": template.format(trace_id=trace_id) if template else None,
                }
            )
            if len(traces) >= self.settings.max_traces:
                break
        return traces, None

    def incidents(self) -> list[dict[str, Any]]:
        notes = []
        for path in sorted(self.settings.incident_dir.glob("*.json")):
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                note = orjson.loads(path.read_bytes())
                notes.append(
                    {
                        "id": note["id"],
                        "alertname": note["alertname"],
                        "status": note["status"],
                        "starts_at": note["starts_at"],
                        "resolved_at": note.get("resolved_at"),
                        "culprit": note["culprit"],
                        "notifications": len(note["notifications"]),
                    }
                )
        return notes


# --- HTTP ------------------------------------------------------------------------------------

RESPONDER_KEY = web.AppKey("responder", Responder)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _alerts(request: web.Request) -> web.Response:
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _json({"error": "the body is not JSON"}, 400)
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        return _json({"error": "expected an Alertmanager webhook payload with `alerts`"}, 400)
    accepted = request.app[RESPONDER_KEY].submit(payload)
    return _json({"accepted": accepted})


async def _incidents(request: web.Request) -> web.Response:
    return _json(request.app[RESPONDER_KEY].incidents())


async def _incident(request: web.Request) -> web.Response:
    ident = request.match_info["ident"]
    if not re.fullmatch(r"[A-Za-z0-9_-]+", ident):
        return _json({"error": "no such incident"}, 404)
    path = request.app[RESPONDER_KEY].note_path(ident, "json")
    if not path.is_file():
        return _json({"error": "no such incident"}, 404)
    return web.Response(body=path.read_bytes(), content_type="application/json")


async def _healthz(_: web.Request) -> web.Response:
    return _json({"status": "ok"})


def build_app(settings: ResponderSettings) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)

    async def lifecycle(app: web.Application) -> Any:
        async with aiohttp.ClientSession() as session:
            responder = Responder(settings, session)
            app[RESPONDER_KEY] = responder
            yield
            await responder.drain()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/alerts", _alerts)
    app.router.add_get("/incidents", _incidents)
    app.router.add_get("/incidents/{ident}", _incident)
    app.router.add_get("/healthz", _healthz)
    return app


def _configure_logging(level: str) -> None:
    import logging

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=lambda o, **_: orjson.dumps(o).decode()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )


async def serve(
    settings: ResponderSettings, ready: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM."""
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    log.info(
        "responder_started",
        url=f"http://{settings.host}:{settings.port}",
        prometheus_url=settings.prometheus_url,
        incident_dir=str(settings.incident_dir),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        await ready()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        log.info("responder_stopped")


# --- command line ------------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults come from ResponderSettings (and so from SERVESCOPE_RESPONDER_*).
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 9095)")
    parser.add_argument("--prometheus-url", help="Prometheus to query (default :9090)")
    parser.add_argument("--incident-dir", type=Path, help="notes go here (default .run/incidents)")
    parser.add_argument("--window", help="range of the diagnostic queries (default 5m)")
    parser.add_argument("--runbook-base-url", help="base for relative runbook_url annotations")
    parser.add_argument("--trace-url-template", help="trace link with {trace_id}, e.g. Jaeger's")
    parser.add_argument("--max-traces", type=int, help="trace ids per note (default 5)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def settings_from_args(args: argparse.Namespace) -> ResponderSettings:
    given = {
        name: value
        for name, value in vars(args).items()
        if value is not None and name in ResponderSettings.model_fields
    }
    return ResponderSettings(**given)


def cmd_responder(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        parse_duration(settings.window)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except OSError as exc:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def add_responder_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`servescope responder`: the Alertmanager webhook receiver."""
    parser = subparsers.add_parser(
        "responder",
        help="Alertmanager webhook receiver: diagnoses each alert, writes incident notes",
    )
    _add_arguments(parser)
    parser.set_defaults(func=cmd_responder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="servescope responder", description=__doc__.split("\n")[0]
    )
    _add_arguments(parser)
    return cmd_responder(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
