"""Every alert has a runbook page in one template, its runbook_url points at it, and the
queries the pages tell people to run read only series that exist."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from servescope.cli.slo import check_expression
from servescope.telemetry.contract import load_contract

from .conftest import RULES_DIR, RUNBOOKS_DIR, alert_names, all_rules, load_rules

SECTIONS = (
    "Meaning",
    "Impact",
    "First three things to run",
    "Likely causes and how to tell them apart",
    "Mitigation",
    "Escalation",
)
NOT_RUNBOOKS = {"README.md"}


def runbook_problems(rules_dir: Path, runbooks_dir: Path) -> list[str]:
    """What is wrong between the alerts of `rules_dir` and the pages of `runbooks_dir`."""
    problems = []
    names = set()
    for path in sorted(rules_dir.glob("*.yml")):
        for rule in load_rules(path):
            if "alert" not in rule:
                continue
            name = rule["alert"]
            names.add(name)
            url = (rule.get("annotations") or {}).get("runbook_url")
            if url != f"runbooks/{name}.md":
                problems.append(f"{name}: runbook_url is {url!r}, not 'runbooks/{name}.md'")
            if not (runbooks_dir / f"{name}.md").is_file():
                problems.append(f"{name}: runbooks/{name}.md is missing")
    for page in sorted(runbooks_dir.glob("*.md")):
        if page.name not in NOT_RUNBOOKS and page.stem not in names:
            problems.append(f"{page.name}: no alert of that name")
    return problems


def test_every_alert_has_a_runbook_and_its_url_points_there() -> None:
    assert runbook_problems(RULES_DIR, RUNBOOKS_DIR) == []


def test_the_check_fails_on_a_missing_page_and_a_wrong_url(tmp_path) -> None:
    rules, runbooks = tmp_path / "rules", tmp_path / "runbooks"
    shutil.copytree(RULES_DIR, rules)
    shutil.copytree(RUNBOOKS_DIR, runbooks)
    (runbooks / "ServescopeNoTraffic.md").unlink()
    path = rules / "latency.alerts.yml"
    path.write_text(
        path.read_text().replace(
            "runbook_url: runbooks/ServescopeP95LatencyHigh.md",
            "runbook_url: runbooks/ServescopeLatencyHigh.md",
        )
    )
    problems = runbook_problems(rules, runbooks)
    assert any("ServescopeNoTraffic" in p and "missing" in p for p in problems), problems
    assert any("ServescopeP95LatencyHigh: runbook_url" in p for p in problems), problems


def _pages() -> dict[str, str]:
    return {name: (RUNBOOKS_DIR / f"{name}.md").read_text() for name in alert_names()}


def test_every_page_follows_the_template() -> None:
    for name, text in _pages().items():
        assert text.startswith(f"# {name}\n"), name
        headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
        assert tuple(headings) == SECTIONS, (name, headings)
        severity = re.search(r"\*\*Severity:\*\* ([^·]+)", text)
        assert severity, name
        expected = {r["labels"]["severity"] for _, r in all_rules() if r.get("alert") == name}
        assert all(s in severity.group(1) for s in expected), (name, severity.group(1))
        rule_link = re.search(r"\*\*Rule:\*\* \[deploy/prometheus/rules/([^\]]+)\]", text)
        assert rule_link and (RULES_DIR / rule_link.group(1)).is_file(), name


def test_first_three_things_are_a_query_a_command_and_a_trace_or_log_lookup() -> None:
    for name, text in _pages().items():
        section = text.split("## First three things to run")[1].split("\n## ")[0]
        steps = re.findall(r"^(\d)\. ", section, flags=re.MULTILINE)
        assert steps[:3] == ["1", "2", "3"], name
        assert "```promql" in section, f"{name}: no PromQL"
        assert "kubectl" in section or "kubectl" in text, f"{name}: no kubectl"
        assert re.search(r"trace|log", section), f"{name}: no trace or log look-up"


def test_runbook_queries_read_only_declared_series() -> None:
    contract = load_contract()
    records = {r["record"] for _, r in all_rules() if "record" in r}
    problems = []
    for page in sorted(RUNBOOKS_DIR.glob("*.md")):
        for block in re.findall(r"```promql\n(.*?)```", page.read_text(), flags=re.DOTALL):
            query = block.replace("<container>", "classifier").replace("<stage>", "infer")
            problems += [f"{page.name}: {p}" for p in check_expression(query, contract, records)]
        for query in re.findall(r"query=([a-z_:]+\{[^}]*\})", page.read_text()):
            query = query.replace("<service>", "classifier").replace("<stage>", "infer")
            problems += [f"{page.name}: {p}" for p in check_expression(query, contract, records)]
    assert not problems, problems


def test_the_oomkilled_page_tells_working_set_rss_and_page_cache_apart() -> None:
    text = (RUNBOOKS_DIR / "ServescopeContainerOOMKilled.md").read_text()
    for series in (
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_memory_cache",
        "container_memory_usage_bytes",
        "kube_pod_container_resource_limits",
    ):
        assert series in text, series
    assert "Working set, RSS and page cache" in text
    assert "reclaim" in text and "OOM killer" in text


def test_the_index_lists_every_runbook() -> None:
    index = (RUNBOOKS_DIR / "README.md").read_text()
    for name in alert_names():
        assert f"[{name}]({name}.md)" in index, name


def test_the_slo_specs_carry_the_runbook_urls_of_their_alerts() -> None:
    spec = yaml.safe_load((RULES_DIR.parent / "slos" / "servescope.yml").read_text())
    for slo in spec["slos"]:
        name = slo["alerting"]["name"]
        assert slo["alerting"]["annotations"]["runbook_url"] == f"runbooks/{name}.md"
