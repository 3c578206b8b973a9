"""SLOs as code: Sloth `prometheus/v1` specs (and plain latency SLOs) turned into rules.

`servescope slo generate` reads deploy/prometheus/slos/*.yml and writes
deploy/prometheus/rules/slos.generated.yml: Sloth's recording rules (`slo:sli_error:ratio_rate5m`
... `ratio_rate30d`, `slo:objective:ratio`, `slo:error_budget:ratio`, `slo:time_period:days`,
`slo:current_burn_rate:ratio`, `slo:period_burn_rate:ratio`,
`slo:period_error_budget_remaining:ratio`, `sloth_slo_info`) and the multi-window,
multi-burn-rate alerts of the SRE workbook, so dashboards and tools built for Sloth work
unchanged. Spec files may hold several YAML documents (`---`), as Sloth's do, and
`--extra-labels KEY=VALUE` adds a label to every generated rule, as Sloth's CLI does.

One deliberate departure from Sloth's output, asked of Sloth by its users, plus its
prerequisite:

* For event SLIs the numerator and the denominator are recorded too
  (`slo:sli_error_events:rate<window>`, `slo:sli_total_events:rate<window>`), and every
  ratio is their quotient.
* The 30-day SLI is the quotient of the 30-day averages of those two rates, i.e. errors over
  events. Sloth averages the 5-minute ratios instead, which weighs a quiet night's 5 minutes
  as much as a busy hour's and misstates the SLI on spiky traffic. (Raw-ratio SLIs have no
  denominator and keep Sloth's average.)

Specs are checked against the telemetry contract: a latency threshold (`le="..."`) on a
contract histogram must be one of its buckets, and labels and values must be the declared
ones. A metric the contract does not declare (nor a documented Kubernetes or Prometheus
series) is a warning: a learner's or a fork's SLO on its own metrics goes through. With
`strict` (`--strict`; the project's own specs are generated that way by `make generate`)
it is refused. A *plain* latency SLO (no
`version:`, a `latency:` block with metric, selector and threshold) is accepted too and
becomes the same Sloth SLO; one whose threshold has no bucket is refused with the list of
buckets to choose from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from servescope.cli.paths import repo_root
from servescope.cli.promql import PromQLError, Selector
from servescope.cli.promql import selectors as promql_selectors
from servescope.telemetry.contract import Contract, MetricSpec, load_contract

SLOTH_SPEC_VERSION = "prometheus/v1"
# The value of sloth_version in sloth_slo_info: this generator, not a Sloth release.
GENERATOR_VERSION = "servescope-slo/v1"
PERIOD = "30d"
PERIOD_DAYS = 30
SPECS_DIR = Path("deploy/prometheus/slos")
OUTPUT = Path("deploy/prometheus/rules/slos.generated.yml")


@dataclass(frozen=True)
class BurnWindow:
    """One multi-window condition: both windows burn faster than `factor` x the budget."""

    short: str
    long: str
    factor: Decimal


# The SRE workbook's (chapter 5) recommended pairs for a 30-day SLO, as Sloth uses them.
PAGE_WINDOWS = (BurnWindow("5m", "1h", Decimal("14.4")), BurnWindow("30m", "6h", Decimal("6")))
TICKET_WINDOWS = (BurnWindow("2h", "1d", Decimal("3")), BurnWindow("6h", "3d", Decimal("1")))
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

_WINDOW_TEMPLATE = re.compile(r"\{\{\s*\.window\s*\}\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ALERT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SLOError(ValueError):
    """A spec that cannot become rules; the message names the file, the SLO and the fix."""


@dataclass(frozen=True)
class AlertMeta:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SLO:
    service: str
    name: str
    objective: Decimal  # percent, e.g. 99.9
    source: str
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    error_query: str | None = None  # events SLI
    total_query: str | None = None
    error_ratio_query: str | None = None  # raw SLI
    page: AlertMeta | None = None
    ticket: AlertMeta | None = None

    @property
    def id(self) -> str:
        return f"{self.service}-{self.name}"

    @property
    def objective_ratio(self) -> Decimal:
        return self.objective / 100

    @property
    def error_budget(self) -> Decimal:
        return (100 - self.objective) / 100

    def id_labels(self) -> dict[str, str]:
        return {"sloth_id": self.id, "sloth_service": self.service, "sloth_slo": self.name}

    def queries(self) -> list[str]:
        return [q for q in (self.error_query, self.total_query, self.error_ratio_query) if q]


# --- reading specs ---------------------------------------------------------------------------


def load_file(
    path: Path,
    contract: Contract | None = None,
    *,
    strict: bool = True,
    warnings: list[str] | None = None,
) -> list[SLO]:
    """Every SLO of a spec file; a file may hold several YAML documents (`---`), as Sloth's
    multi-document spec files do. Empty documents are skipped."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as exc:
        raise SLOError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SLOError(f"{path}: not valid YAML: {exc}") from exc
    if not documents:
        raise SLOError(f"{path}: holds no spec")
    slos: list[SLO] = []
    for index, data in enumerate(documents):
        source = str(path) if len(documents) == 1 else f"{path} (document {index + 1})"
        slos.extend(parse_spec(data, source, contract, strict=strict, warnings=warnings))
    return slos


def parse_spec(
    data: Any,
    source: str,
    contract: Contract | None = None,
    *,
    strict: bool = True,
    warnings: list[str] | None = None,
) -> list[SLO]:
    """A Sloth prometheus/v1 spec or a plain latency SLO, checked against the contract.

    Metrics the contract does not declare are refused when `strict`, otherwise appended to
    `warnings` (when given); every other problem is refused either way."""
    contract = contract or load_contract()
    if not isinstance(data, dict):
        raise SLOError(f"{source}: expected a mapping at the top level")
    if "version" in data:
        slos = _parse_sloth(data, source)
    elif "latency" in data:
        slos = [_parse_plain_latency(data, source, contract)]
    else:
        raise SLOError(
            f"{source}: neither a Sloth spec (`version: {SLOTH_SPEC_VERSION}`) nor a plain "
            "latency SLO (a `latency:` block with metric, selector and threshold)"
        )
    for slo in slos:
        check_queries(slo, contract, strict=strict, warnings=warnings)
    return slos


def _parse_sloth(data: dict[str, Any], source: str) -> list[SLO]:
    if data.get("version") != SLOTH_SPEC_VERSION:
        raise SLOError(
            f"{source}: version is {data.get('version')!r}; only {SLOTH_SPEC_VERSION!r} is supported"
        )
    service = _name(data.get("service"), f"{source}: service")
    labels = _labels(data.get("labels"), f"{source}: labels")
    specs = data.get("slos")
    if not isinstance(specs, list) or not specs:
        raise SLOError(f"{source}: `slos` must list at least one SLO")
    slos: list[SLO] = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise SLOError(f"{source}: slos[{index}] must be a mapping")
        name = _name(spec.get("name"), f"{source}: slos[{index}].name")
        where = f"{source}: SLO {name!r}"
        sli = spec.get("sli")
        if not isinstance(sli, dict):
            raise SLOError(f"{where}: `sli` must hold `events` or `raw`")
        kinds = [k for k in ("events", "raw", "plugin") if k in sli]
        if kinds == ["plugin"]:
            raise SLOError(
                f"{where}: SLI plugins are not supported here; write the queries out as "
                "`events` (error_query, total_query) or `raw` (error_ratio_query)"
            )
        if len(kinds) != 1:
            raise SLOError(f"{where}: `sli` needs exactly one of `events` or `raw`")
        error_query = total_query = ratio_query = None
        if kinds == ["events"]:
            events = sli["events"] or {}
            error_query = _query(events.get("error_query"), f"{where}: sli.events.error_query")
            total_query = _query(events.get("total_query"), f"{where}: sli.events.total_query")
        else:
            raw = sli["raw"] or {}
            ratio_query = _query(
                raw.get("error_ratio_query"), f"{where}: sli.raw.error_ratio_query"
            )
        page, ticket = _alerting(spec.get("alerting"), where)
        slos.append(
            SLO(
                service=service,
                name=name,
                objective=_objective(spec.get("objective"), where),
                source=source,
                description=str(spec.get("description") or ""),
                labels={**labels, **_labels(spec.get("labels"), f"{where}: labels")},
                error_query=error_query,
                total_query=total_query,
                error_ratio_query=ratio_query,
                page=page,
                ticket=ticket,
            )
        )
    names = [s.name for s in slos]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SLOError(f"{source}: SLO names used twice: {', '.join(duplicates)}")
    return slos


def _parse_plain_latency(data: dict[str, Any], source: str, contract: Contract) -> SLO:
    """`latency: {metric, selector, threshold}` -> an events SLO on the threshold's bucket."""
    service = _name(data.get("service"), f"{source}: service")
    name = _name(data.get("name"), f"{source}: name")
    where = f"{source}: SLO {name!r}"
    latency = data["latency"]
    if not isinstance(latency, dict):
        raise SLOError(f"{where}: `latency` must be a mapping with metric, selector, threshold")
    metric_name = latency.get("metric")
    try:
        metric = contract.metric(str(metric_name))
    except KeyError:
        raise SLOError(
            f"{where}: metric {metric_name!r} is not declared in the telemetry contract "
            "(services/telemetry/src/servescope/telemetry/contract.yaml); a plain latency SLO "
            "reads its buckets from there. For a metric of your own, write a Sloth spec "
            "(`version: prometheus/v1`) with `sli.events` queries"
        ) from None
    if metric.type != "histogram":
        raise SLOError(
            f"{where}: {metric.name} is a {metric.type}; a latency SLO needs a histogram"
        )
    threshold = parse_seconds(latency.get("threshold"), f"{where}: latency.threshold")
    bucket = bucket_at(metric, threshold)
    if bucket is None:
        raise SLOError(f"{where}: {no_bucket_message(metric, threshold)}")
    selector = str(latency.get("selector") or "").strip().strip("{}").strip()
    le = go_float(bucket)
    with_le = f'{selector}, le="{le}"' if selector else f'le="{le}"'
    count = f"{metric.name}_count{{{selector}}}" if selector else f"{metric.name}_count"
    window = "[{{.window}}]"
    page, ticket = _alerting(data.get("alerting"), where)
    return SLO(
        service=service,
        name=name,
        objective=_objective(data.get("objective"), where),
        source=source,
        description=str(data.get("description") or ""),
        labels=_labels(data.get("labels"), f"{where}: labels"),
        error_query=(
            f"sum(rate({count}{window}))\n-\nsum(rate({metric.name}_bucket{{{with_le}}}{window}))"
        ),
        total_query=f"sum(rate({count}{window}))",
        page=page,
        ticket=ticket,
    )


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise SLOError(f"{where} must be a name of letters, digits, '-' and '_' (got {value!r})")
    return value


def _labels(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SLOError(f"{where} must be a mapping of label names to values")
    labels: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _LABEL_NAME.match(key):
            raise SLOError(f"{where}: {key!r} is not a valid Prometheus label name")
        if key.startswith("sloth_"):
            raise SLOError(f"{where}: label names starting sloth_ are reserved ({key})")
        labels[key] = str(item)
    return labels


def _objective(value: Any, where: str) -> Decimal:
    try:
        objective = Decimal(str(value))
    except InvalidOperation:
        raise SLOError(
            f"{where}: objective must be a percentage, e.g. 99.9 (got {value!r})"
        ) from None
    if not objective.is_finite() or not 0 < objective < 100:
        raise SLOError(f"{where}: objective must be above 0 and below 100 (got {value!r})")
    return objective


def _query(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SLOError(f"{where} is missing")
    if not _WINDOW_TEMPLATE.search(value):
        raise SLOError(
            f"{where} must use the window template {{{{.window}}}} in its range selectors, "
            "e.g. rate(x[{{.window}}])"
        )
    if "{{" in _WINDOW_TEMPLATE.sub("", value):
        raise SLOError(f"{where}: only the {{{{.window}}}} template is supported")
    return value.strip()


def _alerting(value: Any, where: str) -> tuple[AlertMeta | None, AlertMeta | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise SLOError(f"{where}: `alerting` must be a mapping")
    labels = _labels(value.get("labels"), f"{where}: alerting.labels")
    annotations = _labels(value.get("annotations"), f"{where}: alerting.annotations")
    metas: list[AlertMeta | None] = []
    for key in ("page_alert", "ticket_alert"):
        block = value.get(key) or {}
        if not isinstance(block, dict):
            raise SLOError(f"{where}: alerting.{key} must be a mapping")
        if block.get("disable"):
            metas.append(None)
            continue
        name = value.get("name")
        if not isinstance(name, str) or not _ALERT_NAME.match(name):
            raise SLOError(f"{where}: alerting.name must be a valid alert name (got {name!r})")
        metas.append(
            AlertMeta(
                name=name,
                labels={
                    **labels,
                    **_labels(block.get("labels"), f"{where}: alerting.{key}.labels"),
                },
                annotations={
                    **annotations,
                    **_labels(block.get("annotations"), f"{where}: alerting.{key}.annotations"),
                },
            )
        )
    return metas[0], metas[1]


# --- the contract ------------------------------------------------------------------------------


def parse_seconds(value: Any, where: str) -> float:
    """A threshold: a number of seconds, or '500ms', '0.5s', '1m'."""
    if isinstance(value, bool):
        raise SLOError(f"{where}: expected a duration such as 500ms or 0.5s (got {value!r})")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m)?\s*", str(value))
        if not match:
            raise SLOError(f"{where}: expected a duration such as 500ms or 0.5s (got {value!r})")
        seconds = (
            float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise SLOError(f"{where}: must be a positive duration (got {value!r})")
    return seconds


def bucket_at(metric: MetricSpec, seconds: float) -> float | None:
    for bucket in metric.buckets:
        if math.isclose(bucket, seconds, rel_tol=1e-9, abs_tol=1e-12):
            return bucket
    return None


def no_bucket_message(metric: MetricSpec, seconds: float) -> str:
    below = [b for b in metric.buckets if b < seconds]
    above = [b for b in metric.buckets if b > seconds]
    nearest = " and ".join(f"{go_float(b)} s" for b in ([below[-1]] if below else []) + above[:1])
    return (
        f"threshold {go_float(seconds)} s is not a bucket boundary of {metric.name} "
        f"(buckets: {', '.join(go_float(b) for b in metric.buckets)}). A latency SLO counts "
        f"the requests under its threshold from the bucket at exactly that value, so it "
        f"needs one there. Use a bucket (the nearest are {nearest or 'none'}) or add "
        f"{go_float(seconds)} to the bucket set in "
        "services/telemetry/src/servescope/telemetry/contract.yaml."
    )


def go_float(value: float) -> str:
    """A bucket bound as prometheus_client writes it in the `le` label (0.5, 1.0, 2.5)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


# Series that are not Servescope's own but documented elsewhere: Prometheus's scrape
# health and the Kubernetes series of kube-state-metrics and the kubelet's cAdvisor.
UNDECLARED = "is not declared in the telemetry contract"
EXTERNAL_SERIES = re.compile(r"^(up|kube_[a-z0-9_]+|container_[a-z0-9_]+)$")
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "service", "pod", "container", "endpoint", "environment"}
)


def selectors(expr: str) -> list[Selector]:
    """The series selectors of a rule or SLO query, by the PromQL parser (SLO queries may
    hold the window template, read as 5m)."""
    return promql_selectors(_WINDOW_TEMPLATE.sub("5m", expr))


def declared_metric(contract: Contract, series: str) -> tuple[MetricSpec, str] | None:
    """The contract metric behind a series name, with its suffix (_bucket, _count, _sum)."""
    for spec in contract.metrics:
        if series == spec.name:
            return spec, ""
        if spec.type == "histogram":
            for suffix in ("_bucket", "_count", "_sum"):
                if series == spec.name + suffix:
                    return spec, suffix
    return None


def check_expression(expr: str, contract: Contract, known_records: Iterable[str] = ()) -> list[str]:
    """Problems with the series an expression reads: undeclared names, labels, buckets."""
    records = set(known_records)
    problems: list[str] = []
    try:
        found_selectors = selectors(expr)
    except PromQLError as exc:
        return [str(exc)]
    for sel in found_selectors:
        if sel.metric is None:  # {job="x"}: no name to hold to the contract
            continue
        if sel.metric in records or EXTERNAL_SERIES.match(sel.metric):
            continue
        found = declared_metric(contract, sel.metric)
        if found is None:
            problems.append(f"{sel.metric} {UNDECLARED}")
            continue
        spec, suffix = found
        allowed = set(spec.labels) | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
        for label, op, value in sel.matchers:
            if label not in allowed:
                problems.append(f"{sel.metric} has no label {label!r}")
            elif label == "le" and op == "=":
                try:
                    bound = float(value)
                except ValueError:
                    bound = math.nan
                if bucket_at(spec, bound) is None:
                    problems.append(
                        f"{sel.metric}{{le={value!r}}}: {no_bucket_message(spec, bound)}"
                    )
            elif op == "=" and label in spec.labels and label != "http_route":
                rule = contract.label_rules.get(label)
                if rule is not None and not rule.allows(value):
                    problems.append(f"{sel.metric}: {label}={value!r} is not an allowed value")
    return problems


def check_queries(
    slo: SLO, contract: Contract, *, strict: bool = True, warnings: list[str] | None = None
) -> None:
    """Refuse the SLO's query problems; with `strict` off, a metric the contract does not
    declare is only a warning (appended to `warnings`)."""
    for query in slo.queries():
        problems = check_expression(query, contract)
        unknown = [p for p in problems if p.endswith(UNDECLARED)]
        if not strict:
            problems = [p for p in problems if p not in unknown]
            if warnings is not None:
                for problem in unknown:
                    message = (
                        f"{slo.source}: SLO {slo.name!r}: {problem}; its rules are generated "
                        "unchecked (`--strict` refuses this)"
                    )
                    if message not in warnings:
                        warnings.append(message)
        if problems:
            raise SLOError(f"{slo.source}: SLO {slo.name!r}: " + "; ".join(problems))


# --- rules --------------------------------------------------------------------------------------


def _num(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _filter(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _render_window(query: str, window: str) -> str:
    return _WINDOW_TEMPLATE.sub(window, query).strip()


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _error_events(error_query: str, total_query: str, window: str) -> str:
    """The numerator, zero (not missing) whenever the denominator has events.

    An error query finds nothing while no request has failed yet; a missing numerator would
    leave the ratio undefined and, worse, the 30-day averages of numerator and denominator
    taken over different samples.
    """
    return (
        f"(\n{_indent(_render_window(error_query, window))}\n)\n"
        f"or\n0 * (\n{_indent(_render_window(total_query, window))}\n)\n"
    )


def sli_rules(slo: SLO) -> list[dict[str, Any]]:
    ids = slo.id_labels()
    flt = _filter(ids)
    rules: list[dict[str, Any]] = []

    def labels(window: str) -> dict[str, str]:
        return dict(sorted({**slo.labels, **ids, "sloth_window": window}.items()))

    for window in WINDOWS:
        if slo.error_query and slo.total_query:
            rules += [
                {
                    "record": f"slo:sli_error_events:rate{window}",
                    "expr": _error_events(slo.error_query, slo.total_query, window),
                    "labels": labels(window),
                },
                {
                    "record": f"slo:sli_total_events:rate{window}",
                    "expr": _render_window(slo.total_query, window) + "\n",
                    "labels": labels(window),
                },
                {
                    "record": f"slo:sli_error:ratio_rate{window}",
                    "expr": (
                        f"slo:sli_error_events:rate{window}{flt}\n/\n"
                        f"slo:sli_total_events:rate{window}{flt}\n"
                    ),
                    "labels": labels(window),
                },
            ]
        else:
            assert slo.error_ratio_query is not None
            rules.append(
                {
                    "record": f"slo:sli_error:ratio_rate{window}",
                    "expr": f"({_render_window(slo.error_ratio_query, window)})\n",
                    "labels": labels(window),
                }
            )
    if slo.error_query and slo.total_query:
        rules += [
            {
                "record": f"slo:sli_error_events:rate{PERIOD}",
                "expr": f"avg_over_time(slo:sli_error_events:rate5m{flt}[{PERIOD}])\n",
                "labels": labels(PERIOD),
            },
            {
                "record": f"slo:sli_total_events:rate{PERIOD}",
                "expr": f"avg_over_time(slo:sli_total_events:rate5m{flt}[{PERIOD}])\n",
                "labels": labels(PERIOD),
            },
            {
                "record": f"slo:sli_error:ratio_rate{PERIOD}",
                "expr": (
                    f"slo:sli_error_events:rate{PERIOD}{flt}\n/\n"
                    f"slo:sli_total_events:rate{PERIOD}{flt}\n"
                ),
                "labels": labels(PERIOD),
            },
        ]
    else:
        rules.append(
            {
                "record": f"slo:sli_error:ratio_rate{PERIOD}",
                "expr": (
                    f"sum_over_time(slo:sli_error:ratio_rate5m{flt}[{PERIOD}])\n"
                    "/ ignoring (sloth_window)\n"
                    f"count_over_time(slo:sli_error:ratio_rate5m{flt}[{PERIOD}])\n"
                ),
                "labels": {"sloth_window": PERIOD},
            }
        )
    return rules


def meta_rules(slo: SLO) -> list[dict[str, Any]]:
    ids = slo.id_labels()
    flt = _filter(ids)
    labels = dict(sorted({**slo.labels, **ids}.items()))
    on = "on (sloth_id, sloth_slo, sloth_service) group_left"
    info = dict(
        sorted(
            {
                **labels,
                "sloth_mode": "cli-gen-prom",
                "sloth_objective": _num(slo.objective),
                "sloth_spec": SLOTH_SPEC_VERSION,
                "sloth_version": GENERATOR_VERSION,
            }.items()
        )
    )
    return [
        {
            "record": "slo:objective:ratio",
            "expr": f"vector({_num(slo.objective_ratio)})",
            "labels": labels,
        },
        {
            "record": "slo:error_budget:ratio",
            "expr": f"vector(1-{_num(slo.objective_ratio)})",
            "labels": labels,
        },
        {"record": "slo:time_period:days", "expr": f"vector({PERIOD_DAYS})", "labels": labels},
        {
            "record": "slo:current_burn_rate:ratio",
            "expr": f"slo:sli_error:ratio_rate5m{flt}\n/ {on}\nslo:error_budget:ratio{flt}\n",
            "labels": labels,
        },
        {
            "record": "slo:period_burn_rate:ratio",
            "expr": f"slo:sli_error:ratio_rate{PERIOD}{flt}\n/ {on}\nslo:error_budget:ratio{flt}\n",
            "labels": labels,
        },
        {
            "record": "slo:period_error_budget_remaining:ratio",
            "expr": f"1 - slo:period_burn_rate:ratio{flt}",
            "labels": labels,
        },
        {"record": "sloth_slo_info", "expr": "vector(1)", "labels": info},
    ]


def _burn_condition(slo: SLO, pair: BurnWindow) -> str:
    flt = _filter(slo.id_labels())
    threshold = f"({_num(pair.factor)} * {_num(slo.error_budget)})"
    return (
        "(\n"
        f"    max(slo:sli_error:ratio_rate{pair.short}{flt} > {threshold}) without (sloth_window)\n"
        "    and\n"
        f"    max(slo:sli_error:ratio_rate{pair.long}{flt} > {threshold}) without (sloth_window)\n"
        ")"
    )


def alert_rules(slo: SLO) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for severity, meta, pairs in (
        ("page", slo.page, PAGE_WINDOWS),
        ("ticket", slo.ticket, TICKET_WINDOWS),
    ):
        if meta is None:
            continue
        annotations = {
            "summary": "{{$labels.sloth_service}} {{$labels.sloth_slo}} SLO error budget "
            "burn rate is over expected.",
            "title": f"({severity}) {{{{$labels.sloth_service}}}} {{{{$labels.sloth_slo}}}} "
            "SLO error budget burn rate is too fast.",
            **meta.annotations,
        }
        rules.append(
            {
                "alert": meta.name,
                "expr": "\n".join(
                    [_burn_condition(slo, pairs[0]), "or", _burn_condition(slo, pairs[1])]
                )
                + "\n",
                "labels": dict(sorted({"sloth_severity": severity, **meta.labels}.items())),
                "annotations": dict(sorted(annotations.items())),
            }
        )
    return rules


def parse_extra_labels(items: Iterable[str]) -> dict[str, str]:
    """`--extra-labels KEY=VALUE` (repeatable), as Sloth's CLI takes them."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SLOError(f"--extra-labels {item!r}: expected KEY=VALUE, e.g. team=ml-platform")
        labels.update(_labels({key: value}, "--extra-labels"))
    return labels


def _with_extra(rules: list[dict[str, Any]], extra: dict[str, str]) -> list[dict[str, Any]]:
    if not extra:
        return rules
    return [
        {**rule, "labels": dict(sorted({**rule.get("labels", {}), **extra}.items()))}
        for rule in rules
    ]


def rule_groups(
    slos: Sequence[SLO], extra_labels: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The rule groups of the SLOs; `extra_labels` go on every rule (recording and alert),
    over the spec's own labels, as Sloth's `--extra-labels` do."""
    extra = dict(extra_labels or {})
    groups: list[dict[str, Any]] = []
    for slo in slos:
        groups.append(
            {
                "name": f"sloth-slo-sli-recordings-{slo.id}",
                "rules": _with_extra(sli_rules(slo), extra),
            }
        )
        groups.append(
            {
                "name": f"sloth-slo-meta-recordings-{slo.id}",
                "rules": _with_extra(meta_rules(slo), extra),
            }
        )
        alerts = _with_extra(alert_rules(slo), extra)
        if alerts:
            groups.append({"name": f"sloth-slo-alerts-{slo.id}", "rules": alerts})
    return groups


class _Dumper(yaml.SafeDumper):
    """Block scalars for multi-line expressions, no anchors: the file is read by people."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str_representer)


def render(
    slos: Sequence[SLO], sources: Sequence[str], extra_labels: dict[str, str] | None = None
) -> str:
    ids = [s.id for s in slos]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SLOError(f"SLO ids (service-name) used twice: {', '.join(duplicates)}")
    header = [
        "# Code generated by `servescope slo generate` from "
        + ", ".join(sources)
        + ". DO NOT EDIT;",
        "# edit the specs and run `make generate` (a test fails when this file drifts from them).",
        "#",
        "# Sloth prometheus/v1 record names, plus the numerator and denominator of every event",
        "# SLI (slo:sli_error_events:rate*, slo:sli_total_events:rate*; the numerator is 0, not",
        "# missing, whenever there are events); the 30d SLI is errors over events, not an average",
        "# of 5m ratios. Alerts: page when 5m and 1h burn faster than 14.4x the error budget or",
        "# 30m and 6h faster than 6x; ticket when 2h and 1d burn faster than 3x or 6h and 3d",
        "# faster than 1x (SRE workbook, chapter 5).",
    ]
    if extra_labels:
        header.append(
            "# Extra labels on every rule (--extra-labels): "
            + ", ".join(f"{k}={v}" for k, v in sorted(extra_labels.items()))
        )
    body = yaml.dump(
        {"groups": rule_groups(slos, extra_labels)},
        Dumper=_Dumper,
        sort_keys=False,
        width=4096,
        default_flow_style=False,
    )
    return "\n".join(header) + "\n" + body


def spec_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yml", ".yaml") and p.is_file())


def load_all(
    paths: Sequence[Path],
    contract: Contract | None = None,
    *,
    strict: bool = True,
    warnings: list[str] | None = None,
) -> list[SLO]:
    slos: list[SLO] = []
    for path in paths:
        slos.extend(load_file(path, contract, strict=strict, warnings=warnings))
    return slos


def _display(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return path.name


def render_files(
    paths: Sequence[Path],
    root: Path | None = None,
    *,
    strict: bool = True,
    warnings: list[str] | None = None,
    extra_labels: dict[str, str] | None = None,
) -> str:
    root = root or repo_root()
    slos = load_all(paths, strict=strict, warnings=warnings)
    return render(slos, [_display(p, root) for p in paths], extra_labels)


def render_repository_rules() -> str:
    """The committed deploy/prometheus/rules/slos.generated.yml, from deploy/prometheus/slos/:
    strict, so every metric the project's own SLOs read is in the telemetry contract."""
    root = repo_root()
    return render_files(spec_files(root / SPECS_DIR), root, strict=True)
