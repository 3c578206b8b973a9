"""Check a live /metrics exposition against the telemetry contract, both ways.

Nothing declared may be missing, nothing undeclared may appear, label names must match,
every label value must be allowed, and histogram buckets must be the declared ones.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from servescope.telemetry.contract import Contract, load_contract


def check_exposition(service: str, text: str, contract: Contract | None = None) -> list[str]:
    """Problems found in one service's Prometheus text exposition; empty when it conforms."""
    contract = contract or load_contract()
    declared = {spec.name: spec for spec in contract.for_service(service)}
    problems: list[str] = []
    seen: set[str] = set()
    for family in text_string_to_metric_families(text):
        # The parser drops _total from counter family names; the contract keeps it.
        name = family.name + "_total" if family.type == "counter" else family.name
        spec = declared.get(name)
        if spec is None:
            problems.append(f"{name}: exposed but not declared in the contract for {service}")
            continue
        seen.add(name)
        if family.type != spec.type and not (spec.type == "gauge" and family.type == "unknown"):
            problems.append(f"{name}: exposed as {family.type}, declared {spec.type}")
        buckets: set[float] = set()
        for sample in family.samples:
            labels = dict(sample.labels)
            if spec.type == "histogram" and sample.name.endswith("_bucket"):
                le = labels.pop("le")
                if le != "+Inf":
                    buckets.add(float(le))
            if set(labels) != set(spec.labels):
                problems.append(
                    f"{sample.name}: labels {sorted(labels)}, declared {sorted(spec.labels)}"
                )
                continue
            for label, value in labels.items():
                rule = contract.label_rule(service, label)
                allowed = rule.allows(value) or (label == "class_label" and value == "other")
                if not allowed:
                    problems.append(f"{sample.name}: label {label}={value!r} is not allowed")
        if spec.type == "histogram" and buckets and buckets != set(spec.buckets):
            problems.append(
                f"{name}: buckets {sorted(buckets)} differ from declared {list(spec.buckets)}"
            )
    for name in sorted(set(declared) - seen):
        problems.append(f"{name}: declared for {service} but not exposed")
    return problems


def family_names(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


__all__ = ["check_exposition", "family_names"]
