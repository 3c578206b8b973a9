"""The cost profile's Prometheus cuts (deploy/prometheus/cost-profile.yml), one source for
local mode's scrape jobs, the chart's ServiceMonitor and the remote-write values: it drops no
series that an alert, recording or SLO rule, dashboard, runbook, the responder or a lab
checker reads; promtool accepts local mode's configuration with it; Helm renders it into the
ServiceMonitor with the limits; the remote-write values carry the same rules."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from servescope.cli import promql, relabel
from servescope.cli.local.services import COST_PROFILE_JOBS, prometheus_config
from servescope.responder import culprits, playbooks
from servescope.telemetry.contract import load_contract
from servescope.telemetry.pipeline import PIPELINE

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "servescope"
OBSERVABILITY = CHART / "ci" / "observability-values.yaml"
PROFILE = relabel.load(ROOT)
PORTS = {"preprocess": 18000, "classifier": 18001, "postprocess": 18002}


def responder_queries() -> list[relabel.Reader]:
    """The responder's own queries, as it builds them (the generator, which cannot import the
    responder, keeps every name its source mentions; this holds it to the real selectors)."""
    found = []
    for category, checks in playbooks.PLAYBOOKS.items():
        for check in checks:
            for namespace in (None, "servescope"):
                query = playbooks.render_check(check, "5m", namespace)
                found.append(relabel.Reader(f"responder {category}/{check.key}", query))
    for service in PIPELINE.service_names:
        for stage in (*culprits.STAGE_MEANING, None):
            for category in ("errors", "latency"):
                alert: dict[str, Any] = {"labels": {"category": category}}
                query = culprits.exemplar_query(alert, culprits.Culprit(service, stage=stage))
                found.append(relabel.Reader("responder exemplar look-up", query))
    return found


def dropped_reads(rules: list[dict[str, Any]]) -> list[str]:
    """Every series some query can select that `rules` would drop, with who reads it."""
    exposed = relabel.exposed(load_contract())
    reads = relabel.reads(ROOT, exposed)
    selectors = list(reads.selectors)
    for reader in responder_queries():
        selectors += [(s, reader.who) for s in promql.selectors(reader.expr)]
    reads = relabel.Reads(tuple(selectors), reads.names_in_code)
    problems = []
    for name, series_list in exposed.items():
        for series in series_list:
            if relabel.relabel(series, rules) is None and (who := reads.readers_of(series)):
                labels = ", ".join(f"{k}={v}" for k, v in series.items() if k != "__name__")
                problems.append(f"{name}{{{labels}}} is dropped but read by {sorted(who)[0]}")
                break  # one series per name says enough
    return problems


def test_the_profile_drops_nothing_that_is_read() -> None:
    assert PROFILE.metric_relabel_configs, "the cost profile drops nothing"
    assert dropped_reads(PROFILE.metric_relabel_configs) == []


def test_the_check_fails_when_a_rule_drops_what_an_alert_or_the_responder_reads() -> None:
    stage = {"source_labels": ["__name__"], "regex": "servescope_stage_duration_seconds_bucket"}
    probes = {
        "source_labels": ["__name__", "http_route"],
        "regex": "http_server_request_duration_seconds_bucket;/readyz",
    }
    problems = dropped_reads([*PROFILE.metric_relabel_configs, {**stage, "action": "drop"}])
    assert any("servescope_stage_duration_seconds_bucket" in p for p in problems), problems
    # The errors exemplar look-up reads every route's 5xx buckets, /readyz's 503 too.
    problems = dropped_reads([{**probes, "action": "drop"}])
    assert any("http_route=/readyz" in p for p in problems), problems


def test_the_profile_cuts_whole_names_and_only_drop_actions() -> None:
    rules = PROFILE.metric_relabel_configs
    assert {r["action"] for r in rules} == {"drop"}
    names = rules[0]
    assert names["source_labels"] == ["__name__"]
    # Histograms nobody reads go whole; the runtime's garbage-collector series too.
    for name in ("http_server_response_body_size_bytes_bucket", "python_gc_collections_total"):
        assert relabel.relabel({"__name__": name}, rules) is None, name


def test_limits_bound_a_full_model_repository_and_catch_an_explosion() -> None:
    contract = load_contract()
    limits = PROFILE.limits
    assert set(limits) == {
        "sample_limit",
        "label_limit",
        "label_name_length_limit",
        "label_value_length_limit",
    }
    biggest_measured = max(relabel.MEASURED_KEPT.values())
    assert (
        biggest_measured
        < limits["sample_limit"]
        <= 4 * (biggest_measured + 20 * contract.max_models)
    )
    # One more label on the widest series of the contract still fits; the longest declared
    # value (model_name, 128) too.
    widest = max(len(m.labels) + (m.type == "histogram") for m in contract.metrics)
    assert widest + len(relabel.TARGET_LABELS) + 2 <= limits["label_limit"] <= 32
    assert limits["label_value_length_limit"] >= 128


# --- local mode -------------------------------------------------------------------------------


def test_local_mode_renders_the_cuts_only_with_the_cost_profile_and_promtool_accepts_it(
    tmp_path: Path,
) -> None:
    kept = prometheus_config(PORTS, 19090, "1s", 19093, 19095, 19096)
    cut = prometheus_config(PORTS, 19090, "1s", 19093, 19095, 19096, cost_profile=True)
    for job in kept["scrape_configs"]:
        assert "metric_relabel_configs" not in job and "sample_limit" not in job, job
    jobs = {job["job_name"]: job for job in cut["scrape_configs"]}
    assert set(COST_PROFILE_JOBS) <= set(jobs)
    for name, job in jobs.items():
        if name in COST_PROFILE_JOBS:
            assert job["metric_relabel_configs"] == PROFILE.metric_relabel_configs, name
            assert {k: job[k] for k in PROFILE.limits} == PROFILE.limits, name
        else:  # Prometheus's own and the exporter's series: what the cost is measured with
            assert "metric_relabel_configs" not in job, name
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: apt-get install prometheus (.ci/run installs it)")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cut, sort_keys=False))
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


# --- the chart --------------------------------------------------------------------------------


def camel(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {"source_labels": "sourceLabels", "target_label": "targetLabel"}
    return [{names.get(k, k): v for k, v in rule.items()} for rule in rules]


def camel_back(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"source_labels" if k == "sourceLabels" else k: v for k, v in r.items()} for r in rules]


def test_every_service_monitor_carries_the_profiles_rules_and_limits(helm) -> None:
    monitors = helm.render([OBSERVABILITY]).of_kind("ServiceMonitor")
    assert monitors
    for monitor in monitors:
        spec = monitor["spec"]
        assert spec["sampleLimit"] == PROFILE.limits["sample_limit"]
        assert spec["labelLimit"] == PROFILE.limits["label_limit"]
        assert spec["labelNameLengthLimit"] == PROFILE.limits["label_name_length_limit"]
        assert spec["labelValueLengthLimit"] == PROFILE.limits["label_value_length_limit"]
        for endpoint in spec["endpoints"]:
            rules = endpoint["metricRelabelings"]
            # The profile's first, then the values' own (observability-values adds one).
            assert rules[: len(PROFILE.metric_relabel_configs)] == camel(
                PROFILE.metric_relabel_configs
            )
            assert len(rules) == len(PROFILE.metric_relabel_configs) + 1


def test_the_profile_can_be_turned_off_and_a_values_limit_wins(helm) -> None:
    off = {"monitoring": {"serviceMonitor": {"costProfile": False, "metricRelabelings": []}}}
    (monitor,) = helm.render([OBSERVABILITY], off).of_kind("ServiceMonitor")
    assert "sampleLimit" not in monitor["spec"] and "labelLimit" not in monitor["spec"]
    assert "metricRelabelings" not in monitor["spec"]["endpoints"][0]
    own = {"monitoring": {"serviceMonitor": {"sampleLimit": 123, "labelLimit": 21}}}
    (monitor,) = helm.render([OBSERVABILITY], own).of_kind("ServiceMonitor")
    assert (monitor["spec"]["sampleLimit"], monitor["spec"]["labelLimit"]) == (123, 21)
    assert monitor["spec"]["labelValueLengthLimit"] == PROFILE.limits["label_value_length_limit"]


def test_the_chart_reads_the_profile_through_the_prometheus_symlink() -> None:
    link = CHART / "files" / "prometheus"
    assert (
        link.is_symlink()
        and (link / "cost-profile.yml").resolve() == (ROOT / relabel.SOURCE).resolve()
    )
    template = (CHART / "templates" / "servicemonitor.yaml").read_text()
    assert '"files/prometheus/cost-profile.yml"' in template


# --- upstream ---------------------------------------------------------------------------------


def test_remote_write_values_are_off_by_default_and_carry_the_same_rules() -> None:
    path = ROOT / relabel.REMOTE_WRITE_VALUES
    values = yaml.safe_load(path.read_text())
    (remote,) = values["prometheus"]["prometheusSpec"]["remoteWrite"]
    assert remote["url"].endswith("/api/v1/push")
    jobs = "(" + "|".join(COST_PROFILE_JOBS) + ")"
    expected = [
        {**rule, "sourceLabels": ["job", *rule["sourceLabels"]], "regex": f"{jobs};{rule['regex']}"}
        for rule in camel(PROFILE.metric_relabel_configs)
    ]
    assert remote["writeRelabelConfigs"][: len(expected)] == expected
    # Upstream's own: the raw per-model buckets that rules/models.generated.yml records summed
    # over models stay here; the store gets the recordings.
    recorded = yaml.safe_load((ROOT / relabel.MODEL_RULES).read_text())["groups"][0]["rules"]
    upstream = remote["writeRelabelConfigs"][len(expected) :]
    for rule in recorded:
        family = rule["record"].split(":")[1]
        assert f"rate({family}[5m])" in rule["expr"] and "model_name" not in rule["expr"]
        raw = {"__name__": family, "job": "classifier", "model_name": "digits-cnn"}
        summed = {"__name__": rule["record"], "job": "classifier"}
        assert relabel.relabel(raw, camel_back(upstream)) is None, family
        assert relabel.relabel(summed, camel_back(upstream)) is not None, rule["record"]
        assert relabel.relabel({**raw, "model_name": ""}, camel_back(upstream)) is not None
    # Off by default: no release's values name it until a user adds it.
    manifest = yaml.safe_load((ROOT / "deploy" / "stack" / "stack.yaml").read_text())
    for release in manifest["releases"]:
        assert path.name not in release["values"], release["name"]
