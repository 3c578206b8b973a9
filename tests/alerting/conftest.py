"""Shared by the alerting tests: the rule files, their alerts, and the Debian tools.

A tool that is missing skips the tests that need it with the command that installs it;
`.ci/run` installs them all, so in CI nothing here skips.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from servescope.cli.paths import repo_root

ROOT = repo_root()
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
RUNBOOKS_DIR = ROOT / "runbooks"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"

INSTALL = {
    "promtool": "apt-get install prometheus",
    "prometheus": "apt-get install prometheus",
    "amtool": "apt-get install prometheus-alertmanager",
    "prometheus-alertmanager": "apt-get install prometheus-alertmanager",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed: {INSTALL.get(name, name)} (.ci/run installs it)")
    return path


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def load_rules(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def all_rules() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, rule) for path in rule_files() for rule in load_rules(path)]


def alerts() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, rule) for path, rule in all_rules() if "alert" in rule]


def alert_names() -> list[str]:
    return sorted({rule["alert"] for _, rule in alerts()})
