"""The telemetry contract (contract.yaml), loaded and checked.

Both the code that creates metrics and the tests that scrape the services read this one
file, so the declaration, the code and the docs cannot disagree.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

METRIC_TYPES = {"counter", "gauge", "histogram"}


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
    bucket_sets: dict[str, tuple[float, ...]]
    spans: tuple[SpanSpec, ...] = ()
    log_fields: dict[str, str] | None = None

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
    buckets = {k: tuple(float(b) for b in v) for k, v in raw["bucket_sets"].items()}
    rules: dict[str, LabelRule] = {}
    for name, rule in raw["label_values"].items():
        if isinstance(rule, list):
            rules[name] = LabelRule(name, tuple(str(v) for v in rule))
        else:
            rules[name] = LabelRule(name, pattern=rule["pattern"], note=rule.get("note", ""))
    routes = {svc: tuple(body["routes"]) for svc, body in raw["services"].items()}
    metrics: list[MetricSpec] = []
    for item, runtime in [(m, False) for m in raw["metrics"]] + [
        (m, True) for m in raw.get("runtime_metrics", [])
    ]:
        spec = MetricSpec(
            name=item["name"],
            type=item["type"],
            unit=str(item["unit"]),
            help=" ".join(str(item["help"]).split()),
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
        bucket_sets=buckets,
        spans=tuple(
            SpanSpec(
                name=str(item["name"]),
                kind=str(item["kind"]),
                services=tuple(item["services"]),
                attributes=tuple(item["attributes"]),
                meaning=" ".join(str(item["meaning"]).split()),
            )
            for item in raw.get("spans", [])
        ),
        log_fields={str(k): " ".join(str(v).split()) for k, v in raw.get("log_fields", {}).items()},
    )


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
