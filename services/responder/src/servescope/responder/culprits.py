"""Culprits: from the playbook's query results to the likely service, stage and step.

Pure functions of the results (no I/O), one per alert category, so each is tested with
results written out by hand as Prometheus would return them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from servescope.responder.playbooks import CheckResult, escape
from servescope.telemetry.pipeline import PIPELINE

# The pipeline's facts, from the telemetry contract (servescope.telemetry.pipeline).
STAGE_SERVICE = PIPELINE.stage_service  # part stage -> the service doing its work
STAGE_MEANING = PIPELINE.stage_meaning
STEP_STAGE = PIPELINE.step_stage  # fault step (servescope_fault_value{step}) -> stage
EDGE = PIPELINE.services[0]
TOTAL = PIPELINE.total.name  # the whole prediction (end_to_end)
# Deeper services first: when several fail, the deepest failure explains the others.
DEPTH = {name: i for i, name in enumerate(PIPELINE.deepest_first)}
DRIFT_THRESHOLDS = PIPELINE.drift_thresholds
# The stage timed around onnxruntime's own service, read against servescope_inference_*.
MODEL_STAGE = "infer"
MODEL_SERVICE = PIPELINE.stage(MODEL_STAGE).service  # fails at import if it is gone
MODEL_STEP = PIPELINE.stage(MODEL_STAGE).steps[0].name  # the onnxruntime call: step infer
# Fault kinds (servescope_fault_value{kind}) that slow a step, and how the note says it.
SLOWING_FAULTS = {"delay": "delayed by", "cpu": "burning CPU for"}


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
    end_to_end = stages.pop(TOTAL, None)
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
    # An injected delay (or CPU burn) in a step of that stage, in that service, is the step.
    faults = [
        (s.value, s.labels.get("step", ""), s.labels.get("kind", "delay"))
        for s in (results["faults"].samples if "faults" in results else [])
        if s.labels.get("job", service) == service
        and s.labels.get("kind", "delay") in SLOWING_FAULTS
        and STEP_STAGE.get(s.labels.get("step", "")) == slowest
    ]
    if faults:
        value, step, kind = max(faults)
        culprit.step = step
        evidence.append(f"fault injection on: step {step} {SLOWING_FAULTS[kind]} {_seconds(value)}")
    server = _values(results, "server_p95", "job")
    client = _values(results, "client_p95", "peer_service")
    detail = ""
    # A stage that is the edge's call to another service: its own time, or the wire's?
    if service in EDGE.calls and service in client and service in server:
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
        elif slowest == MODEL_STAGE:
            inference = _values(results, "inference_p95", "")
            model = inference.get("")
            if model is not None and model > 0.5 * server[service]:
                culprit.step = culprit.step or MODEL_STEP
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


def _call_stage(service: str) -> str | None:
    """The stage that is the edge's call to `service` (infer for the classifier)."""
    return next((stage for stage, svc in STAGE_SERVICE.items() if svc == service), None)


def _injected_error(results: Results, service: str) -> tuple[str, float] | None:
    """The step and share of an `error` fault switched on in `service`, if any: the
    strongest evidence there is for where its errors come from."""
    found = [
        (s.value, s.labels.get("step", ""))
        for s in (results["faults"].samples if "faults" in results else [])
        if s.labels.get("kind") == "error" and s.labels.get("job") == service
    ]
    if not found:
        return None
    share, step = max(found)
    return step, share


def _with_injected_error(culprit: Culprit, results: Results) -> Culprit:
    injected = _injected_error(results, culprit.service) if culprit.service else None
    if injected is not None:
        step, share = injected
        culprit.step = step or culprit.step
        culprit.evidence.append(f"fault injection on: {share:.0%} of requests fail at step {step}")
        culprit.summary += f"; an error fault is switched on at step {step}"
    return culprit


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
        return _with_injected_error(
            Culprit(
                peer,
                stage=_call_stage(peer),
                step=outcome,
                summary=f"{peer}: the edge's calls to it fail ({outcome}){detail}",
                evidence=evidence,
            ),
            results,
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
        return _with_injected_error(
            Culprit(
                service,
                summary=f"{service} answers {ratios[service]:.1%} 5xx{where}",
                evidence=evidence,
            ),
            results,
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
            service or EDGE.name,
            step="ingress",
            summary=f"no requests reach the edge: look upstream of {EDGE.name} (ingress, "
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
            MODEL_SERVICE,
            stage="inputs",
            step=",".join(sorted(drifted)),
            summary="the inputs drifted from the training data ("
            + ", ".join(f"{s} {drift[s]:.3f}" for s in sorted(drifted))
            + "): the cause is upstream, in what clients send",
            evidence=evidence,
        )
    if len(versions) > 1:
        return Culprit(
            MODEL_SERVICE,
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
            f'{{job="{escape(culprit.service)}", http_response_status_code=~"5.."}}'
        )
    stage = culprit.stage if culprit.stage in STAGE_MEANING else TOTAL
    return f'servescope_stage_duration_seconds_bucket{{stage="{stage}"}}'
