"""The cost profile's Prometheus cuts: what the services expose that nothing reads, dropped at
scrape time, from one generated file (deploy/prometheus/cost-profile.yml).

The drop rules are computed, never hand-listed: every series the telemetry contract lets the
services expose is set against every query the project runs (alert, recording and SLO rules,
dashboards, runbooks, the responder, lab checkers). A series no query's selector can match is
cut: a whole name, or the values of one label of a name that no selector asks for.
Everything a selector can match is kept with every bucket, so no alert, panel or quantile
changes. A selector without a metric name (`count by (__name__) ({job="x"})`, the cost
dashboard's) counts whatever is there and keeps nothing. The same file feeds local mode's
`metric_relabel_configs` (`prometheus_config(cost_profile=True)`), the chart's ServiceMonitor
`metricRelabelings` (read through the files/prometheus symlink) and the remote-write values in
deploy/stack, which also leave the raw per-model histogram buckets here and send the store
their sums over models (rules/models.generated.yml).

The readers the CLI cannot import (the responder's playbooks, lab checkers: Python that
builds PromQL) count by name: a series name written anywhere in their source is read whole.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from servescope.cli import promql
from servescope.cli.paths import repo_root
from servescope.telemetry.contract import Contract, MetricSpec, load_contract

SOURCE = Path("deploy") / "prometheus" / "cost-profile.yml"
MODEL_RULES = Path("deploy") / "prometheus" / "rules" / "models.generated.yml"
REMOTE_WRITE_VALUES = Path("deploy") / "stack" / "kube-prometheus-stack-remote-write.yaml"

# The app's scrape jobs, which the profile cuts (the ServiceMonitor's jobLabel, the component
# names; local mode's job names).
APP_JOBS = ("preprocess", "classifier", "postprocess", "responder")

# Stands in for a template variable or a runbook placeholder: a matcher on it matches any value.
ANY = "__servescope_any__"
DASHBOARD_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
RUNBOOK_PLACEHOLDER = re.compile(r"<[a-z_]+>")
DURATIONS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

# Values of pattern-bounded labels for the synthetic series (enumerated labels carry all of
# theirs). Values are cut only for labels with a closed list, never for these samples.
SAMPLE_VALUES = {
    "http_response_status_code": ("200", "400", "404", "413", "415", "422", "500", "503"),
    "class_label": tuple(str(d) for d in range(10)),
    "model_name": ("digits-cnn", "logreg-c1"),
}
SAMPLE_DEFAULT = "1"
# Target labels Prometheus adds to every scraped series (the Kubernetes ones via the
# ServiceMonitor; local mode adds `service` as a static label).
TARGET_LABELS = ("job", "instance", "service", "namespace", "pod", "container", "endpoint")
# Headroom of the sample limit (per target, after the cuts) over what a target legitimately
# keeps with a full model repository: room for status codes, routes and faults the measured
# run did not see, yet an unbounded label (raw paths, user ids, a model per request) passes
# it within minutes and fails the scrape loudly (up == 0,
# prometheus_target_scrapes_exceeded_sample_limit_total) instead of filling the TSDB.
SAMPLE_HEADROOM = 2
# Samples per scrape each service's target kept after the cuts
# (scrape_samples_post_metric_relabeling), measured with a real Prometheus scraping the local
# services serving MEASURED_MODELS models (`servescope models build --count 50`) under
# `servescope load --mix mixed --rate 20 --model-repository ...` for 90 s (they exposed 457,
# 1682 and 193). The limit grows this by the contract's per-model series up to max_models.
MEASURED_MODELS = 50
MEASURED_KEPT = {"preprocess": 383, "classifier": 953, "postprocess": 131}
LABEL_HEADROOM = 4
LONGEST_NAME = 64  # label names: the longest the contract declares is 25 characters
LONGEST_VALUE = 256  # label values: the contract bounds them at 128 (model_name)


@dataclass(frozen=True)
class Reader:
    """One query the project runs: who runs it, and the PromQL (variables as ANY)."""

    who: str
    expr: str


Series = dict[str, str]


# --- what the project reads -------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _any(expr: str, pattern: re.Pattern[str]) -> str:
    """Variables as ANY, but Grafana's interval variables (in ranges, not matchers) as theirs."""

    def value(match: re.Match[str]) -> str:
        name = next((g for g in match.groups() if g), match[0])
        return DURATIONS.get(name, ANY)

    return pattern.sub(value, expr)


def readers(root: Path) -> list[Reader]:
    """Every PromQL query in rule files, SLO specs, dashboards and runbooks."""
    found: list[Reader] = []
    for path in sorted((root / "deploy" / "prometheus" / "rules").glob("*.yml")):
        if path.name == MODEL_RULES.name:
            continue  # made from this profile, for upstream: reading it would keep itself alive
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                kind = "alert" if "alert" in rule else "recording rule"
                name = rule.get("alert") or rule.get("record")
                found.append(Reader(f"{kind} {name} ({path.name})", str(rule["expr"])))
    for path in sorted((root / "deploy" / "prometheus" / "slos").glob("*.yml")):
        for slo in (yaml.safe_load(path.read_text()) or {}).get("slos", []):
            for query in _strings(slo.get("sli", {})):
                found.append(Reader(f"SLO {slo['name']} ({path.name})", _sloth(query)))
    for path in sorted((root / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("type") == "loki" or not target.get("expr"):
                    continue
                who = f"dashboard {path.stem}, panel {panel.get('title')!r}"
                found.append(Reader(who, _any(target["expr"], DASHBOARD_VARIABLE)))
        for variable in board.get("templating", {}).get("list", []):
            match = re.fullmatch(r"label_values\((.+), *\w+\)", str(variable.get("query", "")))
            if variable.get("type") == "query" and match:
                who = f"dashboard {path.stem}, variable {variable['name']}"
                found.append(Reader(who, _any(match[1], DASHBOARD_VARIABLE)))
    for path in sorted((root / "runbooks").glob("*.md")):
        text = path.read_text()
        blocks = re.findall(r"```promql\n(.*?)```", text, flags=re.DOTALL)
        blocks += re.findall(r"query=([a-z_:]+\{[^}]*\})", text)
        found += [Reader(f"runbook {path.name}", _any(b, RUNBOOK_PLACEHOLDER)) for b in blocks]
    return found


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)


def _sloth(query: str) -> str:
    return re.sub(r"\{\{\s*\.window\s*\}\}", "5m", query)


def code_readers(root: Path) -> dict[Path, str]:
    """Source that builds PromQL in code: the responder and the labs' checkers."""
    paths = sorted((root / "services" / "responder" / "src").rglob("*.py"))
    paths += sorted((root / "labs").glob("*/*/check.py"))
    return {path: path.read_text() for path in paths}


# --- what the services expose -----------------------------------------------------------


def series_names(spec: MetricSpec) -> list[str]:
    if spec.type == "histogram":
        return [f"{spec.name}_bucket", f"{spec.name}_count", f"{spec.name}_sum"]
    return [spec.name]


def _values(contract: Contract, service: str, label: str) -> tuple[str, ...]:
    if label == "http_route":
        return contract.label_rule(service, label).values
    rule = contract.label_rules.get(label)
    if rule is not None and rule.values:
        return rule.values
    return SAMPLE_VALUES.get(label, (SAMPLE_DEFAULT,))


def enumerated(contract: Contract, label: str) -> bool:
    """Labels whose every value the synthetic series carry (so a value can be cut)."""
    rule = contract.label_rules.get(label)
    return label in ("http_route", "le") or (rule is not None and bool(rule.values))


def exposed(contract: Contract) -> dict[str, list[Series]]:
    """Series name -> the series the services can expose under it (synthetic, but with
    every value of every enumerated label and every bucket)."""
    found: dict[str, list[Series]] = {}
    for spec in contract.metrics:
        services = contract.services if spec.runtime else spec.services
        for service, name in itertools.product(services, series_names(spec)):
            labels = list(spec.labels)
            values = [_values(contract, service, label) for label in labels]
            if name.endswith("_bucket"):
                labels.append("le")
                values.append((*(_le(b) for b in spec.buckets), "+Inf"))
            target = {"job": service, "service": service, "instance": f"{service}:8000"}
            for combination in itertools.product(*values):
                series = {"__name__": name, **target, **dict(zip(labels, combination, strict=True))}
                found.setdefault(name, []).append(series)
    return found


def _le(bucket: float) -> str:
    # prometheus_client's exposition: floats as Python prints them (0.5, 1.0, 10.0).
    return repr(float(bucket))


# --- matching and relabeling ------------------------------------------------------------


def matches(selector: promql.Selector, series: Series) -> bool:
    if selector.metric is not None and selector.metric != series["__name__"]:
        return False
    for label, op, value in selector.matchers:
        if ANY in value:
            continue
        actual = series.get(label, "")
        if op == "=" and actual != value:
            return False
        if op == "!=" and actual == value:
            return False
        if op == "=~" and re.fullmatch(value, actual) is None:
            return False
        if op == "!~" and re.fullmatch(value, actual) is not None:
            return False
    return True


def relabel(series: Series, rules: Iterable[dict[str, Any]]) -> Series | None:
    """Prometheus's drop and keep actions on one series (None: dropped). The rules use only
    these two, so this is all of their meaning."""
    for rule in rules:
        action = rule.get("action", "replace")
        if action not in ("drop", "keep"):
            raise ValueError(f"the cost profile uses only drop and keep, not {action!r}")
        source = rule.get("source_labels", [])
        joined = rule.get("separator", ";").join(series.get(label, "") for label in source)
        hit = re.fullmatch(rule.get("regex", "(.*)"), joined) is not None
        if hit == (action == "drop"):
            return None
    return series


# --- the cuts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reads:
    """What the project reads: parsed selectors and the names code mentions."""

    selectors: tuple[tuple[promql.Selector, str], ...]
    names_in_code: dict[str, str]

    def readers_of(self, series: Series) -> list[str]:
        # A selector without a name ({job="x"}) counts whatever is there (the cost
        # dashboard's series per metric) and needs no particular series: it keeps nothing.
        found = [who for sel, who in self.selectors if sel.metric and matches(sel, series)]
        by_code = self.names_in_code.get(series["__name__"])
        return [*found, by_code] if by_code else found


def reads(root: Path, names: Iterable[str]) -> Reads:
    selectors: list[tuple[promql.Selector, str]] = []
    for reader in readers(root):
        selectors += [(sel, reader.who) for sel in promql.selectors(reader.expr)]
    code = code_readers(root)
    mentioned = {}
    for name in names:
        pattern = re.compile(rf"\b{re.escape(name)}\b")
        for path, text in code.items():
            if pattern.search(text):
                mentioned[name] = f"code {path.relative_to(root)}"
                break
    return Reads(tuple(selectors), mentioned)


def _regex(values: Iterable[str]) -> str:
    escaped = sorted(re.escape(v) for v in values)
    return escaped[0] if len(escaped) == 1 else f"({'|'.join(escaped)})"


def compute_cuts(contract: Contract, root: Path) -> list[dict[str, Any]]:
    """The drop rules: whole names no selector matches, then per name the values of one
    enumerated label no selector matches with (each rule drops only unread series)."""
    series_by_name = exposed(contract)
    read = reads(root, series_by_name)
    whole: list[str] = []
    partial: list[dict[str, Any]] = []
    for name, all_series in series_by_name.items():
        kept = [s for s in all_series if read.readers_of(s)]
        if not kept:
            whole.append(name)
            continue
        labels = sorted({k for s in all_series for k in s} - {"__name__", *TARGET_LABELS})
        for label in (lb for lb in labels if enumerated(contract, lb)):
            unread = {s[label] for s in all_series} - {s[label] for s in kept}
            if unread:
                partial.append(
                    {
                        "source_labels": ["__name__", label],
                        "regex": f"{re.escape(name)};{_regex(unread)}",
                        "action": "drop",
                    }
                )
    rules = [{"source_labels": ["__name__"], "regex": _regex(whole), "action": "drop"}]
    return (rules if whole else []) + partial


def limits(contract: Contract, rules: list[dict[str, Any]]) -> dict[str, int]:
    """Scrape limits: samples a target keeps after the cuts (measured, grown to a full model
    repository by the contract's per-model series), labels per series, name and value lengths."""
    per_model: dict[str, int] = {}
    one_model = SAMPLE_VALUES["model_name"][0]
    for series_list in exposed(contract).values():
        for series in series_list:
            if series.get("model_name") == one_model and relabel(series, rules) is not None:
                per_model[series["job"]] = per_model.get(series["job"], 0) + 1
    growth = max(contract.max_models - MEASURED_MODELS, 0)
    biggest = max(kept + per_model.get(job, 0) * growth for job, kept in MEASURED_KEPT.items())
    labels = max(len(s.labels) + (1 if s.type == "histogram" else 0) for s in contract.metrics)
    return {
        "sample_limit": _round_up(biggest * SAMPLE_HEADROOM, 500),
        "label_limit": labels + len(TARGET_LABELS) + 1 + LABEL_HEADROOM,  # +1: __name__
        "label_name_length_limit": LONGEST_NAME,
        "label_value_length_limit": LONGEST_VALUE,
    }


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


# --- the file ---------------------------------------------------------------------------

HEADER = """\
# GENERATED by `make generate` (servescope.cli.relabel) from the telemetry contract and every
# query the project runs; do not edit. The cost profile's Prometheus cuts, one source for:
#   local mode     metric_relabel_configs and the limits on the services' scrape jobs
#                  (prometheus_config(cost_profile=True); `servescope cost` runs with and without)
#   the chart      metricRelabelings and the limits of the ServiceMonitor
#                  (monitoring.serviceMonitor.costProfile, read through files/prometheus)
#   remote write   writeRelabelConfigs in deploy/stack/kube-prometheus-stack-remote-write.yaml
#
# metric_relabel_configs drops only series that no selector of an alert, recording or SLO
# rule, dashboard panel or variable, runbook query, the responder or a lab checker can match:
# first whole names, then per name the values of one label nobody selects. A histogram
# someone reads keeps every bucket. Add a query that reads a dropped series and
# `make generate` keeps it again (a test fails until you do).
#
# limits: a scrape over sample_limit samples (after the drops) fails as a whole: up == 0 and
# prometheus_target_scrapes_exceeded_sample_limit_total grows, so a cardinality explosion
# (a raw path or user id as a label, a model per request) pages instead of filling the TSDB.
# sample_limit is {headroom}x what the biggest target keeps after the drops with a full model
# repository ({models} models): the samples measured per target (servescope.cli.relabel,
# MEASURED_KEPT) plus the contract's per-model series for every further model. label_limit is
# the most labels a series of the contract carries, plus the target labels and __name__,
# plus {label_headroom}. Label names over {name} and values over {value} characters are refused
# (the contract's longest are 25 and 128).
"""


def render(root: Path | None = None, contract: Contract | None = None) -> str:
    root = root or repo_root()
    contract = contract or load_contract()
    rules = compute_cuts(contract, root)
    header = HEADER.format(
        headroom=SAMPLE_HEADROOM,
        models=contract.max_models,
        label_headroom=LABEL_HEADROOM,
        name=LONGEST_NAME,
        value=LONGEST_VALUE,
    )
    body = {"limits": limits(contract, rules), "metric_relabel_configs": rules}
    return header + yaml.safe_dump(body, sort_keys=False, width=100)


@dataclass(frozen=True)
class Profile:
    limits: dict[str, int]
    metric_relabel_configs: list[dict[str, Any]]


def load(root: Path | None = None) -> Profile:
    data = yaml.safe_load(((root or repo_root()) / SOURCE).read_text())
    return Profile(dict(data["limits"]), list(data["metric_relabel_configs"]))


def apply(scrape_config: dict[str, Any], profile: Profile) -> None:
    """One scrape job of the services, with the cuts and the limits."""
    scrape_config["metric_relabel_configs"] = [
        *profile.metric_relabel_configs,
        *scrape_config.get("metric_relabel_configs", []),
    ]
    scrape_config.update(profile.limits)


# --- per-model histograms: recorded aggregates, raw series kept local ----------------------


def per_model_histograms(contract: Contract, rules: list[dict[str, Any]]) -> list[str]:
    """Histograms with a model_name label whose buckets survive the cuts: each model adds a
    series per bucket, and the readers aggregate them over models."""
    return [
        spec.name
        for spec in contract.metrics
        if spec.type == "histogram"
        and "model_name" in spec.labels
        and relabel({"__name__": f"{spec.name}_bucket", "model_name": "m"}, rules) is not None
    ]


def model_record(name: str) -> str:
    return f"job_le:{name}_bucket:rate5m"


MODEL_RULES_HEADER = """\
# GENERATED by `make generate` (servescope.cli.relabel) from the telemetry contract and
# deploy/prometheus/cost-profile.yml; do not edit.
#
# Per-model histograms, aggregated over models. Every model adds a series per bucket, and what
# reads them (the model dashboard's heatmap, the responder's p95) sums them over models. This
# Prometheus keeps the raw per-model series (the recording needs them, and it holds them for
# its retention), but the long-term store behind remote write receives only these aggregates:
# deploy/stack/kube-prometheus-stack-remote-write.yaml drops the raw per-model buckets
# upstream, so a fleet of 5,000 models costs the store a bucket per job, not per model. Query
# histogram_quantile(0.95, sum by (le) (job_le:<histogram>_bucket:rate5m)) there.
"""


def render_model_rules(root: Path | None = None) -> str:
    profile = load(root)
    rules = [
        {
            "record": model_record(name),
            "expr": f"sum by (namespace, job, le) (rate({name}_bucket[5m]))",
        }
        for name in per_model_histograms(load_contract(), profile.metric_relabel_configs)
    ]
    body = {"groups": [{"name": "servescope.models.recording", "rules": rules}]}
    return MODEL_RULES_HEADER + yaml.safe_dump(body, sort_keys=False, width=100)


# --- upstream: remote write -------------------------------------------------------------

REMOTE_WRITE_HEADER = """\
# GENERATED by `make generate` (servescope.cli.relabel) from deploy/prometheus/cost-profile.yml;
# do not edit. Remote write to a horizontally scaled store, for when one Prometheus is not
# enough: off by default. Turn it on by adding this file after kube-prometheus-stack.yaml in
# the release's `values` in deploy/stack/stack.yaml (then `servescope stack install`), or with
# `helm upgrade kube-prometheus-stack ... -f` it. The url is Grafana Mimir's distributor as its
# mimir-distributed chart names it in namespace mimir; Thanos Receive takes the same protocol
# (http://thanos-receive.thanos.svc.cluster.local:19291/api/v1/receive).
#
# writeRelabelConfigs are the cost profile's drop rules again, scoped to the app's jobs: the
# ServiceMonitor already drops these series at scrape time, and this keeps them out of the
# store whatever else scrapes the services (a PodMonitor of a fork, federation). Sharded
# scraping (prometheusSpec.shards) splits the targets over several Prometheus servers, each
# writing here, when one server's head series outgrow its memory.
#
# The last rule is upstream's own: the raw per-model histogram buckets stay in this Prometheus
# (the dashboards and the responder read them here) and the store gets their aggregates over
# models (rules/models.generated.yml in deploy/prometheus).
"""


def remote_write_relabel_configs(profile: Profile) -> list[dict[str, Any]]:
    """The cost profile's rules for writeRelabelConfigs: camelCase, and only on the app's jobs
    (a name like process_cpu_seconds_total is other jobs' series too)."""
    jobs = f"({'|'.join(APP_JOBS)})"
    return [
        {
            "sourceLabels": ["job", *rule["source_labels"]],
            "regex": f"{jobs};{rule['regex']}",
            "action": rule["action"],
        }
        for rule in profile.metric_relabel_configs
    ]


def upstream_only_relabel_configs(profile: Profile) -> list[dict[str, Any]]:
    """The raw per-model buckets that models.generated.yml records as aggregates."""
    names = per_model_histograms(load_contract(), profile.metric_relabel_configs)
    if not names:
        return []
    buckets = _regex(f"{name}_bucket" for name in names)
    return [
        {
            "sourceLabels": ["job", "__name__", "model_name"],
            "regex": f"({'|'.join(APP_JOBS)});{buckets};.+",
            "action": "drop",
        }
    ]


def render_remote_write(root: Path | None = None) -> str:
    profile = load(root)
    values = {
        "prometheus": {
            "prometheusSpec": {
                "shards": 1,
                "remoteWrite": [
                    {
                        "name": "mimir",
                        "url": "http://mimir-distributor.mimir.svc.cluster.local:8080/api/v1/push",
                        "headers": {"X-Scope-OrgID": "servescope"},
                        "writeRelabelConfigs": [
                            *remote_write_relabel_configs(profile),
                            *upstream_only_relabel_configs(profile),
                        ],
                    }
                ],
            }
        }
    }
    return REMOTE_WRITE_HEADER + yaml.safe_dump(values, sort_keys=False, width=100)
