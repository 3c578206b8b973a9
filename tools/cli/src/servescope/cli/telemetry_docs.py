"""docs/telemetry.md, generated from the telemetry contract."""

from __future__ import annotations

from servescope.telemetry.contract import Contract, LabelRule, load_contract
from servescope.telemetry.faultspec import KINDS


def _values(rule: LabelRule) -> str:
    if rule.values:
        values = ", ".join(f"`{v}`" if v else "empty" for v in rule.values)
        return values + (f" ({rule.note})" if rule.note else "")
    return f"pattern `{rule.pattern}`" + (f" ({rule.note})" if rule.note else "")


def _pipeline(contract: Contract) -> list[str]:
    """The pipeline section: stages and steps, services, probe routes, drift thresholds."""
    pipeline = contract.pipeline
    if pipeline is None:
        return []
    out = [
        "## Pipeline",
        "",
        "The stages of a prediction, in order, as the edge times them (label `stage` of",
        "`servescope_stage_duration_seconds`), the service doing each, and its fault-injection",
        "steps (label `step` of `servescope_fault_value`, `SERVESCOPE_FAULTS`,",
        "`/admin/faults/{step}`; each step is also an INTERNAL span of the same name).",
        "",
        "| stage | service | steps | meaning |",
        "|---|---|---|---|",
    ]
    for stage in pipeline.stages:
        steps = " ".join(f"`{step.name}`: {step.meaning}" for step in stage.steps) or "-"
        out.append(f"| `{stage.name}` | {stage.service} | {steps} | {stage.meaning} |")
    out += [
        "",
        "Fault kinds (`servescope.telemetry.faultspec`; label `kind` of `servescope_fault_value`",
        "and `servescope_fault_injections_total`). A spec is `KIND[:STEP][:VALUE]`, switched on",
        "at start by `SERVESCOPE_FAULTS` (comma-separated) or at run time with `PUT /admin/faults`",
        '(`{"spec": "error:infer:0.2"}`, only when `SERVESCOPE_ADMIN_TOKEN` is set); off by default:',
        "",
        "| spec | value | at run time | what it does |",
        "|---|---|---|---|",
    ]
    for kind in KINDS.values():
        runtime = "yes" if kind.runtime else "no (environment only)"
        out.append(f"| `{kind.usage}` | {kind.bounds()} | {runtime} | {kind.meaning} |")
    out += ["", "Services, in call order:", ""]
    for service in pipeline.services:
        calls = f" Calls {', '.join(service.calls)}." if service.calls else ""
        out.append(f"- **{service.name}**: {service.meaning}{calls}")
    out += [
        "",
        "Probe, scrape and admin routes, left out of every request rate (`http_route!~` in",
        f"the rules and dashboards): `{pipeline.probe_regex}`.",
        "",
        "| drift signal | drifted above | meaning |",
        "|---|---|---|",
    ]
    for signal in pipeline.drift:
        out.append(f"| `{signal.name}` | {signal.threshold:g} | {signal.meaning} |")
    out.append("")
    return out


def render_markdown(contract: Contract | None = None) -> str:
    contract = contract or load_contract()
    out = [
        "# Telemetry contract",
        "",
        "<!-- Generated from services/telemetry/src/servescope/telemetry/contract.yaml by",
        "     `make generate`; edit the YAML, not this file. A test fails when they differ. -->",
        "",
        "Every metric the services expose, with its type, unit, labels and buckets. Metric",
        "objects are created from the same file, and a test scrapes the running services and",
        "checks their exposition against it both ways. Scrape `/metrics` on each service's own",
        "port; OpenMetrics (with exemplars carrying `trace_id`) when the scraper asks for it.",
        "",
        *_pipeline(contract),
        "## Metrics",
        "",
        "| name | type | unit | labels | services | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for spec in contract.metrics:
        if spec.runtime:
            continue
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
        extra = " Exemplars: trace_id, span_id." if spec.exemplars else ""
        out.append(
            f"| `{spec.name}` | {spec.type} | {spec.unit} | {labels} | "
            f"{', '.join(spec.services)} | {spec.help}{extra} |"
        )
    out += ["", "## Histogram buckets", ""]
    for name, buckets in contract.bucket_sets.items():
        users = [m.name for m in contract.metrics if m.buckets == buckets]
        out.append(f"- **{name}** ({', '.join(f'`{u}`' for u in users)}): {list(buckets)}")
    out += [
        "",
        "Latency bucket sets include 0.2 s and 0.5 s exactly: the p95 alert threshold and the",
        "latency SLO threshold, so both are exact counts, not interpolations.",
        "",
        "## Label values",
        "",
        "Every label has a closed set of values or a pattern with a stated bound, so no request",
        "can create new series. The bounds the notes below refer to: `max_class_labels` ="
        f" {contract.max_class_labels}, `max_models` = {contract.max_models} (the models one"
        " classifier serves, the default one included; it refuses to start with more).",
        "",
        "| label | values |",
        "|---|---|",
        f"| `http_route` | the service's route templates, or `{contract.unmatched_route}` for any"
        " path no route matches |",
    ]
    for name, rule in contract.label_rules.items():
        out.append(f"| `{name}` | {_values(rule)} |")
    out += ["", "## Routes per service", ""]
    for service, routes in contract.routes.items():
        out.append(f"- **{service}**: " + ", ".join(f"`{r}`" for r in routes))
    out += [
        "",
        "## Spans",
        "",
        "Server spans continue the caller's W3C `traceparent`; sampling is parent-based with",
        "`SERVESCOPE_TRACE_SAMPLE_RATIO` at the edge. Resource attributes: `service.name`,",
        "`service.version`, `service.namespace`, and on Kubernetes `k8s.pod.name` and",
        "`k8s.namespace.name`.",
        "",
        "| name | kind | services | attributes | meaning |",
        "|---|---|---|---|---|",
    ]
    for span in contract.spans:
        attributes = ", ".join(f"`{a}`" for a in span.attributes)
        out.append(
            f"| `{span.name}` | {span.kind} | {', '.join(span.services)} | {attributes} | "
            f"{span.meaning} |"
        )
    out += [
        "",
        "## Log fields",
        "",
        "JSON lines on stdout. WARNING and ERROR lines are always kept; INFO and DEBUG lines",
        "inside a request are kept for `SERVESCOPE_LOG_INFO_SAMPLE_RATIO` of traces (default",
        "10%), chosen from the trace id so every service keeps the same traces' lines.",
        "",
        "| field | meaning |",
        "|---|---|",
    ]
    for name, meaning in (contract.log_fields or {}).items():
        out.append(f"| `{name}` | {meaning} |")
    out += [
        "",
        "## Runtime metrics",
        "",
        "From prometheus_client's process, platform and GC collectors, on every service:",
        "",
    ]
    for spec in contract.metrics:
        if spec.runtime:
            out.append(f"- `{spec.name}` ({spec.type}, {spec.unit}): {spec.help}")
    return "\n".join(out) + "\n"
