"""Debuggability kept, proved on the cut run: every rule and dashboard query still answers,
and the slow-step drill still ends with the responder naming the right service and step.

An alert's expression is empty while all is well (`p95 > 0.2` returns nothing when p95 is
0.05), so "answers" has two grades: the expression itself returns data, or, when it is
empty, every operand under its comparisons and set operators does (the p95 itself). An
expression whose operands are empty is listed with the selectors that have no data. The
proof compares the two runs: nothing that answered with everything kept may go silent
under the cost profile.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from servescope.cli import promql
from servescope.cli.cost.observe import PrometheusAPI
from servescope.cli.dashboard_render import substitute
from servescope.cli.local.alerting import ResponderProcess
from servescope.cli.local.process import free_port
from servescope.cli.main import main as servescope
from servescope.dashboards import DASHBOARDS, OUTPUT_DIR
from servescope.dashboards.common import panels_of
from servescope.telemetry.pipeline import PIPELINE

# How well an expression answers, best first: it returns data; the operands under its
# comparisons do; only the series it reads do; some series it reads have no data; error.
STATUSES = ("answers", "inner answers", "series answer", "no data", "error")
# Returning data and operands returning data are the same evidence: the data is there.
_LEVEL = {"answers": 2, "inner answers": 2, "series answer": 1, "no data": 0, "error": 0}
COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}
SET_OPERATORS = {"and", "or", "unless"}

# Why a series can have no data in a healthy local run, by metric name prefix: the report
# names the reason next to an expression that reads it.
NO_DATA_REASONS = {
    "kube_horizontalpodautoscaler_": "local mode has no HorizontalPodAutoscaler: a Kubernetes object",
    "kube_pod_container_status_last_terminated_reason": (
        "kube-state-metrics writes it only after a container has terminated (no restart, no "
        "OOM kill in this run)"
    ),
    "container_oom_events_total": "written only once a container has been OOM-killed",
}


def no_data_reason(selectors: list[str]) -> str:
    """The known reasons these series have no data, or a generic one."""
    found = {
        reason
        for selector in selectors
        for prefix, reason in NO_DATA_REASONS.items()
        if selector.startswith(prefix)
    }
    return "; ".join(sorted(found)) or "no event of that kind happened in this run"


# The drill: what `servescope fault preprocess delay resize 0.5` does, and the alert it raises.
DRILL_STEP = "resize"
DRILL_SECONDS = 0.5
DRILL_ALERT = "ServescopeP95LatencyHigh"


@dataclass(frozen=True)
class Expression:
    kind: str  # alert, recording, slo, dashboard
    name: str  # the alert or record name, or "dashboard / panel"
    expr: str


def rule_expressions(rules_dir: Path) -> Iterator[Expression]:
    """Every rule in deploy/prometheus/rules: SLO rules are the generated file's."""
    for path in sorted(rules_dir.glob("*.yml")):
        slo = "slo" in path.name
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule:
                    yield Expression("slo" if slo else "alert", rule["alert"], rule["expr"])
                else:
                    yield Expression("slo" if slo else "recording", rule["record"], rule["expr"])


def dashboard_expressions(root: Path) -> Iterator[Expression]:
    """Every PromQL target of every dashboard, template variables as the pictures use them."""
    for name in DASHBOARDS:
        board = json.loads((root / OUTPUT_DIR / f"{name}.json").read_text())
        for panel in panels_of(board):
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("type") == "loki" or "expr" not in target:
                    continue
                yield Expression(
                    "dashboard", f"{name} / {panel['title']}", substitute(target["expr"])
                )


def operands(node: promql_parser.Expr) -> list[promql_parser.Expr]:
    """The parts of an expression below its comparisons and set operators."""
    if isinstance(node, promql_parser.ParenExpr):
        return operands(node.expr)
    if isinstance(node, promql_parser.BinaryExpr):
        op = str(node.op)
        if op in SET_OPERATORS:
            return operands(node.lhs) + operands(node.rhs)
        if op in COMPARISONS and not (node.modifier and node.modifier.return_bool):
            sides = [
                s for s in (node.lhs, node.rhs) if not isinstance(s, promql_parser.NumberLiteral)
            ]
            return [part for side in sides for part in operands(side)]
    return [node]


def _selector(selector: promql.Selector) -> str:
    matchers = ", ".join(
        f"{label}{op}{json.dumps(value)}" for label, op, value in selector.matchers
    )
    return f"{selector.metric or ''}{{{matchers}}}" if matchers else str(selector.metric)


def _selector_query(selector: promql.Selector) -> str:
    return f"count({_selector(selector)})"


def check(api: PrometheusAPI, expression: Expression) -> dict[str, Any]:
    """{"status": one of STATUSES, "missing": [selectors without data]}."""
    try:
        return _check(api, expression)
    except RuntimeError as exc:  # Prometheus refused to evaluate it
        return {"status": "error", "missing": [], "error": str(exc)}


def _check(api: PrometheusAPI, expression: Expression) -> dict[str, Any]:
    if api.query(expression.expr):
        return {"status": "answers", "missing": []}
    parts = operands(promql.parse(expression.expr))
    if all(api.query(str(part)) for part in parts):
        return {"status": "inner answers", "missing": []}
    missing = sorted(
        {
            _selector(selector)
            for selector in promql.selectors(expression.expr)
            if not api.query(_selector_query(selector))
        }
    )
    # Empty below the comparisons too (a count of targets down, a budget burning) while
    # every series it reads has data: quiet because all is well, not blind.
    return {"status": "series answer" if not missing else "no data", "missing": missing}


def check_all(api: PrometheusAPI, root: Path) -> dict[str, dict[str, Any]]:
    """Every rule and dashboard query, keyed "kind: name: expression"."""
    found: dict[str, dict[str, Any]] = {}
    expressions = [
        *rule_expressions(root / "deploy" / "prometheus" / "rules"),
        *dashboard_expressions(root),
    ]
    for expression in expressions:
        key = f"{expression.kind}: {expression.name}: {' '.join(expression.expr.split())}"
        found[key] = {"kind": expression.kind, "name": expression.name, **check(api, expression)}
    return found


def compare(kept: dict[str, dict[str, Any]], cut: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the cut silenced (answers less than with everything kept: must be nothing), and
    what has no data in both runs (with the series it misses)."""
    lost = [
        key
        for key, value in cut.items()
        if _LEVEL[value["status"]] < _LEVEL[kept.get(key, value)["status"]]
    ]
    silent = {
        key: sorted(set(value["missing"]) | set(kept.get(key, value)["missing"]))
        for key, value in cut.items()
        if value["status"] == "no data" and key not in lost
    }
    by_kind: dict[str, dict[str, int]] = {}
    for value in cut.values():
        counts = by_kind.setdefault(value["kind"], {"total": 0, **dict.fromkeys(STATUSES, 0)})
        counts["total"] += 1
        counts[value["status"]] += 1
    errors = {
        key: value.get("error", "")
        for run in (kept, cut)
        for key, value in run.items()
        if value["status"] == "error"
    }
    return {"lost": lost, "silent_in_both": silent, "by_kind": by_kind, "errors": errors}


def _webhook(alert: dict[str, Any], service: str) -> dict[str, Any]:
    """An Alertmanager webhook (version 4) for one firing alert of the production rules."""
    labels = {
        "alertname": alert["alert"],
        **{k: v for k, v in alert.get("labels", {}).items() if "{{" not in v},
        "job": service,
        "service": service,
    }
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "version": "4",
        "status": "firing",
        "receiver": "responder",
        "groupKey": f"cost-drill-{alert['alert']}",
        "groupLabels": {"alertname": alert["alert"]},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": {"runbook_url": alert["annotations"]["runbook_url"]},
                "startsAt": now,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://127.0.0.1/graph",
                "fingerprint": f"{abs(hash(now)) % (1 << 63):016x}",
            }
        ],
    }


def _alert_rule(rules_dir: Path, name: str) -> dict[str, Any]:
    for path in sorted(rules_dir.glob("*.yml")):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                if rule.get("alert") == name:
                    rule_found: dict[str, Any] = rule
                    return rule_found
    raise LookupError(f"no alert {name} in {rules_dir}")


def drill(
    api: PrometheusAPI,
    root: Path,
    run_dir: Path,
    service_ports: dict[str, int],
    token_file: Path,
    seconds: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """A 0.5 s delay in the resize step under traffic for `seconds`, then the latency alert
    through the responder (diagnosis window `seconds`): does its note name the step?"""
    step = PIPELINE.step(DRILL_STEP)
    rules_dir = root / "deploy" / "prometheus" / "rules"
    rule = _alert_rule(rules_dir, DRILL_ALERT)
    edge = PIPELINE.services[0].name
    fault = ["fault", step.service, "delay", DRILL_STEP, f"{DRILL_SECONDS:g}"]
    where = ["--port", str(service_ports[step.service]), "--token-file", str(token_file)]
    if servescope([*fault, *where]) != 0:
        return {
            "ok": False,
            "error": "the fault could not be switched on",
            "expected": {"service": step.service, "step": step.name},
        }
    responder = ResponderProcess(
        free_port(), run_dir / "drill", api.url, window=f"{max(round(seconds), 5)}s"
    )
    try:
        responder.start()
        time.sleep(seconds)
        firing = api.query(rule["expr"])
        status, _ = http_post(responder.url + "/alerts", _webhook(rule, edge))
        note = _wait_for_note(responder, rule["alert"], timeout=30)
    finally:
        responder.stop()
        servescope(["fault", step.service, "delay", DRILL_STEP, "0", *where])
    culprit = (note or {}).get("culprit") or {}
    ok = culprit.get("service") == step.service and culprit.get("step") == step.name
    say(
        f"drill: {step.service} {DRILL_STEP} +{DRILL_SECONDS:g} s -> responder names "
        f"{culprit.get('service')} / {culprit.get('step')} ({'right' if ok else 'WRONG'})"
    )
    return {
        "ok": ok,
        "fault": f"{step.service} delay {DRILL_STEP} {DRILL_SECONDS:g}",
        "alert": rule["alert"],
        "alert_condition_true": bool(firing),
        "webhook_status": status,
        "named_service": culprit.get("service"),
        "named_stage": culprit.get("stage"),
        "named_step": culprit.get("step"),
        "expected": {"service": step.service, "step": step.name},
    }


def http_post(url: str, body: Any) -> tuple[int, bytes]:
    request = urllib.request.Request(  # noqa: S310 (loopback)
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_for_note(
    responder: ResponderProcess, alert: str, timeout: float
) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for note in responder.incidents():
            if note.get("alertname") == alert and note.get("culprit"):
                return note
        time.sleep(0.3)
    return None
