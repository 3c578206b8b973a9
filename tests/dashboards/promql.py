"""Helpers shared by the dashboard tests: the committed dashboards, their queries with the
template variables replaced by concrete values, and the metric names a query reads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from servescope.cli import promql
from servescope.cli.paths import repo_root
from servescope.dashboards import DASHBOARDS, OUTPUT_DIR
from servescope.dashboards.common import panels_of

# Values Grafana would put in for the template variables.
VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "service": "preprocess",
    "namespace": "servescope",
    "container": "preprocess",
}


def load(name: str) -> dict[str, Any]:
    return json.loads((repo_root() / OUTPUT_DIR / f"{name}.json").read_text())


def dashboards() -> dict[str, dict[str, Any]]:
    return {name: load(name) for name in DASHBOARDS}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in panels_of(board) if p.get("type") != "row"]


def is_loki(target: dict[str, Any]) -> bool:
    return bool(target["datasource"]["type"] == "loki")


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every PromQL target of a dashboard (Loki targets are
    LogQL: see log_queries)."""
    return [
        (p["title"], t["expr"])
        for p in panels(board)
        for t in p.get("targets", [])
        if not is_loki(t)
    ]


def log_queries(board: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) of every Loki target of a dashboard."""
    return [(p["title"], t) for p in panels(board) for t in p.get("targets", []) if is_loki(t)]


def variable_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable name, series selector) of every label_values() query variable."""
    found = []
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"])
            assert match, variable["query"]
            found.append((variable["name"], match[1]))
    return found


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in VARIABLES, f"no test value for ${name} in {expr}"
        return VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names a dashboard query selects, by the PromQL parser the SLO generator uses,
    after the template variables are replaced (`[$__rate_interval]` is not PromQL)."""
    return promql.metric_names(substitute(expr))


def recording_rules() -> set[str]:
    import yaml

    names = set()
    for path in (repo_root() / "deploy" / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(rule["record"] for rule in group["rules"] if "record" in rule)
    return names


def prometheus_query(url: str, expr: str) -> dict[str, Any]:
    response = httpx.get(url + "/api/v1/query", params={"query": expr}, timeout=10)
    body: dict[str, Any] = response.json()
    return body


def rel(path: Path) -> str:
    return str(path.relative_to(repo_root()))
