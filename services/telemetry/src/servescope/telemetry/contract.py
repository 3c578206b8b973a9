"""The telemetry contract (contract.yaml), loaded and checked.

Both the code that creates metrics and the tests that scrape the services read this one
file, so the declaration, the code and the docs cannot disagree. The pipeline's facts
(servescope.telemetry.pipeline) live in the same file: the `stage`, `step` and `signal`
label values, the step spans and the lists in help texts are derived from them here, and
loading fails, naming the stale entry, where the rest of the file disagrees with them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from servescope.telemetry.pipeline import Pipeline, PipelineError
from servescope.telemetry.pipeline import parse as parse_pipeline

METRIC_TYPES = {"counter", "gauge", "histogram"}
# Labels whose values the pipeline section declares: label -> `from:` in label_values.
DERIVED_LABELS = {"stage": "pipeline.stages", "step": "pipeline.steps", "signal": "pipeline.drift"}


@dataclass(frozen=True)
class LabelRule:
    """The values one label may take: a closed list, or a pattern with a documented bound."""

    name: str
    values: tuple[str, ...] = ()
    pattern: str | None = None
    note: str = ""

    def allows(self, value: str) -> bool:
        if self.values:
            return value in self.values
        return self.pattern is not None and re.fullmatch(self.pattern, value) is not None


@dataclass(frozen=True)
class MetricSpec:
    name: str
    type: str
    unit: str
    help: str
    services: tuple[str, ...]
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()
    exemplars: bool = False
    runtime: bool = False  # registered by prometheus_client's collectors, not by our code


@dataclass(frozen=True)
class SpanSpec:
    name: str
    kind: str
    services: tuple[str, ...]
    attributes: tuple[str, ...]
    meaning: str


@dataclass(frozen=True)
class Contract:
    metrics: tuple[MetricSpec, ...]
    routes: dict[str, tuple[str, ...]]
    label_rules: dict[str, LabelRule]
    unmatched_route: str
    max_class_labels: int
    max_models: int  # models one classifier serves: the bound on label model_name
    bucket_sets: dict[str, tuple[float, ...]]
    spans: tuple[SpanSpec, ...] = ()
    log_fields: dict[str, str] | None = None
    pipeline: Pipeline | None = None

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(self.routes)

    def for_service(self, service: str) -> list[MetricSpec]:
        return [m for m in self.metrics if m.runtime or service in m.services]

    def metric(self, name: str) -> MetricSpec:
        for spec in self.metrics:
            if spec.name == name:
                return spec
        raise KeyError(f"metric {name!r} is not declared in the telemetry contract")

    def label_rule(self, service: str, label: str) -> LabelRule:
        if label == "http_route":
            return LabelRule(label, (*self.routes[service], self.unmatched_route))
        return self.label_rules[label]


class ContractError(ValueError):
    pass


def _parse(raw: dict[str, Any]) -> Contract:
    try:
        pipeline = parse_pipeline(raw["pipeline"])
    except PipelineError as exc:
        raise ContractError(str(exc)) from exc
    buckets = {k: tuple(float(b) for b in v) for k, v in raw["bucket_sets"].items()}
    rules: dict[str, LabelRule] = {}
    for name, rule in raw["label_values"].items():
        if isinstance(rule, list):
            rules[name] = LabelRule(name, tuple(str(v) for v in rule))
            if name in DERIVED_LABELS and rules[name].values != derived_values(pipeline, name):
                raise ContractError(
                    f"contract.yaml label_values.{name} lists {list(rules[name].values)}, but "
                    f"the pipeline section declares {list(derived_values(pipeline, name))}: "
                    f"write `{name}: {{from: {DERIVED_LABELS[name]}}}`"
                )
        elif "from" in rule:
            if DERIVED_LABELS.get(name) != rule["from"]:
                raise ContractError(
                    f"contract.yaml label_values.{name}: cannot take values from "
                    f"{rule['from']!r} (known: "
                    + ", ".join(f"{label} from {src}" for label, src in DERIVED_LABELS.items())
                    + ")"
                )
            # optional: the label may also be empty (Prometheus: absent), e.g. `step` on a
            # service-wide fault.
            extra = ("",) if rule.get("optional") else ()
            rules[name] = LabelRule(
                name, derived_values(pipeline, name) + extra, note=str(rule.get("note", ""))
            )
        else:
            rules[name] = LabelRule(name, pattern=rule["pattern"], note=rule.get("note", ""))
    routes = {svc: tuple(body["routes"]) for svc, body in raw["services"].items()}
    _check_pipeline(pipeline, routes)
    metrics: list[MetricSpec] = []
    for item, runtime in [(m, False) for m in raw["metrics"]] + [
        (m, True) for m in raw.get("runtime_metrics", [])
    ]:
        spec = MetricSpec(
            name=item["name"],
            type=item["type"],
            unit=str(item["unit"]),
            help=_expand(" ".join(str(item["help"]).split()), pipeline, item["name"]),
            services=tuple(item.get("services", routes)),
            labels=tuple(item.get("labels", [])),
            buckets=buckets[item["buckets"]] if "buckets" in item else (),
            exemplars=bool(item.get("exemplars", False)),
            runtime=runtime,
        )
        _check(spec, rules, routes)
        metrics.append(spec)
    names = [m.name for m in metrics]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ContractError(f"metrics declared twice: {sorted(duplicates)}")
    return Contract(
        metrics=tuple(metrics),
        routes=routes,
        label_rules=rules,
        unmatched_route=raw["unmatched_route"],
        max_class_labels=int(raw["max_class_labels"]),
        max_models=int(raw["max_models"]),
        bucket_sets=buckets,
        spans=_spans(raw.get("spans", []), pipeline),
        log_fields={str(k): " ".join(str(v).split()) for k, v in raw.get("log_fields", {}).items()},
        pipeline=pipeline,
    )


def derived_values(pipeline: Pipeline, label: str) -> tuple[str, ...]:
    """The values of a label the pipeline section declares (stage, step or signal)."""
    return {
        "stage": pipeline.stage_names,
        "step": pipeline.step_names,
        "signal": tuple(s.name for s in pipeline.drift),
    }[label]


def _check_pipeline(pipeline: Pipeline, routes: dict[str, tuple[str, ...]]) -> None:
    unknown = [s for s in pipeline.service_names if s not in routes]
    if unknown:
        raise ContractError(
            f"contract.yaml pipeline.services {unknown} have no entry under services:"
        )
    declared = [r for service in pipeline.service_names for r in routes[service]]
    for probe in pipeline.probe_routes:
        if not any(re.fullmatch(probe, route) for route in declared):
            raise ContractError(
                f"contract.yaml pipeline.probe_routes: {probe!r} matches no declared route"
            )


_PLACEHOLDER = re.compile(r"\{pipeline\.([a-z_]+)\}")


def _expand(text: str, pipeline: Pipeline, where: str) -> str:
    """Write out {pipeline.stages}, {pipeline.steps} and {pipeline.drift} in a text."""

    def number(value: float) -> str:
        return f"{value:g}"

    lists = {
        "stages": ", ".join(f"{s.name} ({s.meaning})" for s in pipeline.stages),
        "steps": "; ".join(
            f"{service}: {', '.join(pipeline.fault_steps(service))}"
            for service in pipeline.service_names
            if pipeline.fault_steps(service)
        ),
        "drift": ", ".join(
            f"{s.name} ({s.meaning}; drift above {number(s.threshold)})" for s in pipeline.drift
        ),
    }

    def replace(match: re.Match[str]) -> str:
        if match.group(1) not in lists:
            raise ContractError(
                f"{where}: unknown placeholder {match.group(0)} (known: "
                + ", ".join(f"{{pipeline.{k}}}" for k in lists)
                + ")"
            )
        return lists[match.group(1)]

    return _PLACEHOLDER.sub(replace, text)


def _spans(items: list[dict[str, Any]], pipeline: Pipeline) -> tuple[SpanSpec, ...]:
    """Declared spans; an entry `step: NAME` is the INTERNAL span of that pipeline step."""
    spans: list[SpanSpec] = []
    covered: list[str] = []
    for item in items:
        if "step" in item:
            try:
                step = pipeline.step(str(item["step"]))
            except KeyError as exc:
                raise ContractError(
                    f"contract.yaml spans: step {item['step']!r} is not a pipeline step "
                    f"(the pipeline section declares {', '.join(pipeline.step_names)})"
                ) from exc
            covered.append(step.name)
            spans.append(
                SpanSpec(
                    name=step.span,
                    kind="INTERNAL",
                    services=(step.service,),
                    attributes=tuple(item["attributes"]),
                    meaning=step.meaning,
                )
            )
            continue
        name = str(item["name"])
        if name in pipeline.step_names:
            raise ContractError(
                f"contract.yaml spans: {name!r} is a pipeline step; declare it as "
                f"`- step: {name}` (its name, service and meaning come from the pipeline)"
            )
        spans.append(
            SpanSpec(
                name=name,
                kind=str(item["kind"]),
                services=tuple(item["services"]),
                attributes=tuple(item["attributes"]),
                meaning=" ".join(str(item["meaning"]).split()),
            )
        )
    missing = [s for s in pipeline.step_names if s not in covered]
    twice = sorted({s for s in covered if covered.count(s) > 1})
    if missing or twice:
        raise ContractError(
            "contract.yaml spans: "
            + "; ".join(
                ([f"pipeline steps without a `- step:` span entry: {missing}"] if missing else [])
                + ([f"steps with more than one span entry: {twice}"] if twice else [])
            )
        )
    return tuple(spans)


def _check(spec: MetricSpec, rules: dict[str, LabelRule], routes: dict[str, Any]) -> None:
    problems = []
    if spec.type not in METRIC_TYPES:
        problems.append(f"type {spec.type!r} is not one of {sorted(METRIC_TYPES)}")
    if spec.type == "counter" and not spec.name.endswith("_total"):
        problems.append("counters end in _total")
    if spec.type == "histogram" and not spec.buckets:
        problems.append("histograms need buckets")
    if spec.unit in ("seconds", "bytes", "ratio") and not spec.name.removesuffix("_total").endswith(
        spec.unit
    ):
        problems.append(f"unit {spec.unit} must end the name")
    for label in spec.labels:
        if label != "http_route" and label not in rules:
            problems.append(f"label {label!r} has no declared values")
    unknown = set(spec.services) - set(routes)
    if unknown:
        problems.append(f"unknown services {sorted(unknown)}")
    if problems:
        raise ContractError(f"{spec.name}: " + "; ".join(problems))


@functools.cache
def load_contract() -> Contract:
    text = resources.files("servescope.telemetry").joinpath("contract.yaml").read_text()
    return _parse(yaml.safe_load(text))
