"""The rule files: promtool accepts them, promtool unit tests cover every alert both ways,
and every alert carries the labels and annotations routing, inhibition and the responder
rely on. Rules read only series the telemetry contract (or Kubernetes) declares."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from servescope.cli.local.services import prometheus_config
from servescope.cli.slo import check_expression
from servescope.telemetry.contract import load_contract

from .conftest import (
    RULE_TESTS_DIR,
    RULES_DIR,
    alert_names,
    alerts,
    all_rules,
    rule_files,
    tool,
)

SEVERITIES = {"page", "ticket"}
CATEGORIES = {"latency", "errors", "availability", "traffic", "saturation", "model"}
UNIT_TESTS = sorted(RULE_TESTS_DIR.glob("*.test.yml"))


def test_the_rule_folder_holds_alerts_recordings_and_the_generated_slo_rules() -> None:
    names = {p.name for p in rule_files()}
    assert "slos.generated.yml" in names
    assert "recording.rules.yml" in names
    assert not any("placeholder" in n for n in names), "the chart's placeholder is replaced"
    assert len(alert_names()) >= 13


def test_promtool_check_rules_passes_on_every_rule_file() -> None:
    promtool = tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", *map(str, rule_files())], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    promtool = tool("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", test_file.name],
        cwd=RULE_TESTS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _unit_test_cases() -> list[tuple[str, dict]]:
    cases = []
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test") or []:
                cases.append((f"{path.name}: {test['name']}", case))
    return cases


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    cases = _unit_test_cases()
    missing = []
    for name in alert_names():
        own = [case for _, case in cases if case["alertname"] == name]
        if not any(case.get("exp_alerts") for case in own):
            missing.append(f"{name}: no test where it fires")
        if not any(not case.get("exp_alerts") for case in own):
            missing.append(f"{name}: no test where it stays silent")
    assert not missing, missing


def test_firing_unit_tests_check_labels_and_the_runbook_url() -> None:
    for where, case in _unit_test_cases():
        for expected in case.get("exp_alerts") or []:
            labels = expected.get("exp_labels") or {}
            annotations = expected.get("exp_annotations") or {}
            assert labels.get("severity") in SEVERITIES, where
            assert labels.get("service"), where
            assert annotations.get("runbook_url") == f"runbooks/{case['alertname']}.md", where


def test_alerts_with_a_for_are_checked_before_it_has_passed() -> None:
    """ "Fires after its `for`": a silent check earlier in the same test as a firing one."""
    durations = {rule["alert"]: rule.get("for", "0s") for _, rule in alerts()}
    pending_checked = set()
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            cases = test.get("alert_rule_test") or []
            for case in cases:
                if not case.get("exp_alerts"):
                    continue
                fires = _minutes(case["eval_time"])
                if any(
                    other["alertname"] == case["alertname"]
                    and not other.get("exp_alerts")
                    and 0
                    < fires - _minutes(other["eval_time"])
                    <= _minutes(durations[case["alertname"]]) + 2
                    for other in cases
                ):
                    pending_checked.add(case["alertname"])
    expected = {name for name, duration in durations.items() if _minutes(duration) > 0}
    assert expected <= pending_checked, sorted(expected - pending_checked)


def _minutes(duration: str) -> float:
    units = {"s": 1 / 60, "m": 1, "h": 60, "d": 1440}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", str(duration)))


@pytest.mark.parametrize(
    ("path", "rule"), alerts(), ids=lambda x: x["alert"] if isinstance(x, dict) else x.name
)
def test_every_alert_has_severity_category_service_and_annotations(path, rule) -> None:
    labels = rule.get("labels") or {}
    annotations = rule.get("annotations") or {}
    assert labels.get("severity") in SEVERITIES, f"{rule['alert']} in {path.name}"
    assert labels.get("category") in CATEGORIES, rule["alert"]
    # The grouping key in Alertmanager and the inhibition key: every alert names a service.
    assert labels.get("service"), rule["alert"]
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key), f"{rule['alert']} has no {key}"
    assert annotations["runbook_url"] == f"runbooks/{rule['alert']}.md"


def test_alert_names_repeat_only_for_the_page_and_ticket_of_one_slo() -> None:
    seen: dict[str, list[str]] = {}
    for _, rule in alerts():
        seen.setdefault(rule["alert"], []).append(rule["labels"]["severity"])
    for name, severities in seen.items():
        assert len(severities) == len(set(severities)), name


def test_rules_read_only_series_the_contract_or_kubernetes_declares() -> None:
    contract = load_contract()
    records = {rule["record"] for _, rule in all_rules() if "record" in rule}
    problems = []
    for path, rule in all_rules():
        for problem in check_expression(rule["expr"], contract, records):
            problems.append(f"{path.name} {rule.get('alert') or rule.get('record')}: {problem}")
    assert not problems, problems


def test_every_recording_rule_outside_the_slo_rules_is_used_by_a_rule() -> None:
    # models.generated.yml records per-model histograms over models for the store behind
    # remote write (tests/deploy/test_cost_profile.py), which is where they are read.
    exprs = [str(rule["expr"]) for _, rule in all_rules()]
    for path, rule in all_rules():
        if "record" in rule and path.name not in ("slos.generated.yml", "models.generated.yml"):
            assert any(rule["record"] in expr for expr in exprs), rule["record"]


def test_the_expression_check_catches_undeclared_series_and_buckets() -> None:
    contract = load_contract()
    assert check_expression("rate(made_up_metric_total[5m])", contract)
    assert check_expression('servescope_stage_duration_seconds_bucket{le="0.4"}', contract), (
        "0.4 is not a bucket"
    )
    assert not check_expression(
        'servescope_stage_duration_seconds_bucket{le="0.5", stage="end_to_end"}', contract
    )
    assert check_expression('servescope_stage_duration_seconds_bucket{stage="resize"}', contract)
    assert check_expression('servescope_ready{flavour="x"}', contract)
    # Braces inside label values (route templates) do not confuse the scan.
    assert not check_expression(
        'http_server_request_duration_seconds_count{http_route="/v2/models/{name}/infer"}',
        contract,
    )


def test_every_rule_file_is_exercised_by_a_unit_test() -> None:
    loaded = set()
    for path in UNIT_TESTS:
        for rule_file in yaml.safe_load(path.read_text())["rule_files"]:
            loaded.add((RULE_TESTS_DIR / rule_file).resolve())
    assert {p.resolve() for p in rule_files()} <= loaded


def test_local_prometheus_loads_every_rule_file_and_sends_to_alertmanager(tmp_path) -> None:
    promtool = tool("promtool")
    ports = {"preprocess": 18000, "classifier": 18001, "postprocess": 18002}
    config = prometheus_config(ports, 19090, "1s", alertmanager_port=19093)
    assert config["rule_files"] == [str((RULES_DIR / "*.yml").resolve())]
    targets = [
        target
        for alertmanager in config["alerting"]["alertmanagers"]
        for static in alertmanager["static_configs"]
        for target in static["targets"]
    ]
    assert targets == ["127.0.0.1:19093"]
    # Without a port, the file's own target (Alertmanager's default 9093) stays.
    default = prometheus_config(ports, 19090)
    assert default["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:9093"
    ]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rule_files())} rule files found" in result.stdout
