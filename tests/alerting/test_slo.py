"""SLOs as code: the Sloth specs, the generated rules (Sloth's record names, the workbook's
burn-rate alerts), the drift check, and the plain latency SLO with no bucket refused."""

from __future__ import annotations

import argparse
import re
import subprocess
import textwrap
from decimal import Decimal

import pytest
import yaml

from servescope.cli import slo
from servescope.cli.commands import slo as slo_command
from servescope.cli.generate import generators
from servescope.cli.paths import repo_root

from .conftest import PROMETHEUS_DIR, ROOT, tool

GENERATED = PROMETHEUS_DIR / "rules" / "slos.generated.yml"
SPEC = PROMETHEUS_DIR / "slos" / "servescope.yml"

SLOTH_RECORDS = {
    *(f"slo:sli_error:ratio_rate{w}" for w in ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d")),
    "slo:objective:ratio",
    "slo:error_budget:ratio",
    "slo:time_period:days",
    "slo:current_burn_rate:ratio",
    "slo:period_burn_rate:ratio",
    "slo:period_error_budget_remaining:ratio",
    "sloth_slo_info",
}

PLAIN_LATENCY = """
service: servescope
name: predictions-latency
objective: 99
description: 99% of successful predictions within {threshold}.
latency:
  metric: http_server_request_duration_seconds
  selector: 'job="preprocess", http_route=~"/v1/predict|/v1/models/[^/]+/predict", http_response_status_code=~"2.."'
  threshold: {threshold}
"""


def _generated() -> dict:
    return yaml.safe_load(GENERATED.read_text())


def _rules_of(slo_name: str) -> list[dict]:
    return [
        rule
        for group in _generated()["groups"]
        if group["name"].endswith(f"servescope-{slo_name}")
        for rule in group["rules"]
    ]


def test_the_specs_are_the_two_slos_of_the_issue() -> None:
    slos = {s.name: s for s in slo.load_file(SPEC)}
    assert set(slos) == {"predictions-availability", "predictions-latency"}
    assert slos["predictions-availability"].objective == Decimal("99.9")
    assert slos["predictions-latency"].objective == Decimal("99")
    assert 'le="0.5"' in (slos["predictions-latency"].error_query or "")


def test_the_committed_rules_match_the_specs() -> None:
    assert GENERATED.read_text() == slo.render_repository_rules(), (
        "run `servescope slo generate` (or `make generate`)"
    )
    assert "deploy/prometheus/rules/slos.generated.yml" in generators(repo_root())


@pytest.mark.parametrize("name", ["predictions-availability", "predictions-latency"])
def test_every_slo_has_sloths_record_names_and_its_denominator(name: str) -> None:
    rules = _rules_of(name)
    records = {r["record"] for r in rules if "record" in r}
    assert records >= SLOTH_RECORDS
    assert {"slo:sli_error_events:rate5m", "slo:sli_total_events:rate5m"} <= records
    for rule in rules:
        if "record" in rule:
            assert rule["labels"]["sloth_slo"] == name
            assert rule["labels"]["sloth_service"] == "servescope"
            assert rule["labels"]["sloth_id"] == f"servescope-{name}"
    # The period SLI is errors over events, not an average of 5-minute ratios.
    period = next(r for r in rules if r.get("record") == "slo:sli_error:ratio_rate30d")
    assert "slo:sli_error_events:rate30d" in period["expr"]
    assert "count_over_time" not in period["expr"]


@pytest.mark.parametrize("name", ["predictions-availability", "predictions-latency"])
def test_alerts_are_the_workbooks_multiwindow_multi_burn_rate_pairs(name: str) -> None:
    budget = {"predictions-availability": "0.001", "predictions-latency": "0.01"}[name]
    alerts = {r["labels"]["sloth_severity"]: r for r in _rules_of(name) if "alert" in r}
    assert set(alerts) == {"page", "ticket"}
    pairs = {
        "page": [("5m", "1h", "14.4"), ("30m", "6h", "6")],
        "ticket": [("2h", "1d", "3"), ("6h", "3d", "1")],
    }
    for severity, rule in alerts.items():
        assert rule["labels"]["severity"] == severity
        expr = rule["expr"]
        for short, long, factor in pairs[severity]:
            for window in (short, long):
                assert f"slo:sli_error:ratio_rate{window}{{" in expr
                assert re.search(
                    rf"ratio_rate{window}\{{[^}}]*\}} > \({re.escape(factor)} \* {budget}\)", expr
                ), (severity, window)
        assert rule["annotations"]["runbook_url"].startswith("runbooks/")


def test_generated_rules_pass_promtool(tmp_path) -> None:
    promtool = tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(GENERATED)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_plain_latency_slo_on_a_bucket_becomes_the_same_sloth_slo(tmp_path) -> None:
    path = tmp_path / "latency.yml"
    path.write_text(PLAIN_LATENCY.format(threshold="500ms"))
    (plain,) = slo.load_file(path)
    committed = next(s for s in slo.load_file(SPEC) if s.name == "predictions-latency")

    def same(query: str | None) -> str:
        return " ".join((query or "").split())

    assert same(plain.error_query) == same(committed.error_query)
    assert same(plain.total_query) == same(committed.total_query)
    # And it renders into rules promtool accepts.
    promtool = tool("promtool")
    out = tmp_path / "rules.yml"
    out.write_text(slo.render([plain], [path.name]))
    result = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("threshold", ["0.5", "0.5s", "500ms", 0.5])
def test_thresholds_are_read_in_any_unit(threshold, tmp_path) -> None:
    data = yaml.safe_load(PLAIN_LATENCY.format(threshold="X"))
    data["latency"]["threshold"] = threshold
    (parsed,) = slo.parse_spec(data, "inline")
    assert 'le="0.5"' in (parsed.error_query or "")


def test_a_plain_latency_slo_without_a_bucket_at_its_threshold_is_refused(tmp_path) -> None:
    path = tmp_path / "latency.yml"
    path.write_text(PLAIN_LATENCY.format(threshold="400ms"))
    with pytest.raises(slo.SLOError) as caught:
        slo.load_file(path)
    message = str(caught.value)
    assert "predictions-latency" in message and str(path) in message
    assert (
        "threshold 0.4 s is not a bucket boundary of http_server_request_duration_seconds"
        in message
    )
    assert "the nearest are 0.3 s and 0.5 s" in message
    assert "contract.yaml" in message


def test_the_cli_refuses_it_with_the_same_message(tmp_path, capsys) -> None:
    path = tmp_path / "latency.yml"
    path.write_text(PLAIN_LATENCY.format(threshold="0.25s"))
    assert _cli("slo", "validate", str(path)) == 1
    err = capsys.readouterr().err
    assert "not a bucket boundary" in err and "0.2 s and 0.3 s" in err
    assert _cli("slo", "generate", str(path), "--out", str(tmp_path / "x.yml")) == 1
    assert not (tmp_path / "x.yml").exists()


def test_a_sloth_spec_reading_a_missing_bucket_is_refused() -> None:
    spec = yaml.safe_load(SPEC.read_text())
    latency = spec["slos"][1]["sli"]["events"]
    latency["error_query"] = latency["error_query"].replace('le="0.5"', 'le="0.4"')
    with pytest.raises(slo.SLOError, match="not a bucket boundary"):
        slo.parse_spec(spec, "inline")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(version="prometheus/v2"), "only 'prometheus/v1'"),
        (lambda s: s["slos"][0].update(objective=100), "above 0 and below 100"),
        (lambda s: s["slos"][0].update(objective="lots"), "must be a percentage"),
        (lambda s: s["slos"][1].update(name="predictions-availability"), "used twice"),
        (lambda s: s["slos"][0]["sli"].update(plugin={"id": "x"}), "exactly one"),
        (
            lambda s: s["slos"][0].update(sli={"plugin": {"id": "sloth-common/x"}}),
            "plugins are not supported",
        ),
        (
            lambda s: s["slos"][0]["sli"]["events"].update(total_query="sum(rate(up[5m]))"),
            "window template",
        ),
        (
            lambda s: s["slos"][0]["sli"]["events"].update(
                total_query="sum(rate(made_up_requests_total[{{.window}}]))"
            ),
            "made_up_requests_total is not declared",
        ),
        (lambda s: s["slos"][0]["alerting"].update(name="not an alert name"), "alert name"),
        (lambda s: s.update(labels={"sloth_id": "x"}), "reserved"),
    ],
)
def test_invalid_specs_are_refused_with_a_reason(change, message) -> None:
    spec = yaml.safe_load(SPEC.read_text())
    change(spec)
    with pytest.raises(slo.SLOError, match=re.escape(message)):
        slo.parse_spec(spec, "inline")


def test_raw_error_ratio_slis_keep_sloths_period_average() -> None:
    spec = {
        "version": "prometheus/v1",
        "service": "servescope",
        "slos": [
            {
                "name": "raw",
                "objective": 99.5,
                "sli": {
                    "raw": {
                        "error_ratio_query": textwrap.dedent(
                            """\
                            sum(rate(http_server_request_duration_seconds_count{job="preprocess", http_response_status_code=~"5.."}[{{.window}}]))
                            /
                            sum(rate(http_server_request_duration_seconds_count{job="preprocess"}[{{.window}}]))"""
                        )
                    }
                },
                "alerting": {"page_alert": {"disable": True}, "ticket_alert": {"disable": True}},
            }
        ],
    }
    (parsed,) = slo.parse_spec(spec, "inline")
    groups = slo.rule_groups([parsed])
    assert [g["name"] for g in groups] == [
        "sloth-slo-sli-recordings-servescope-raw",
        "sloth-slo-meta-recordings-servescope-raw",
    ]
    period = groups[0]["rules"][-1]
    assert period["record"] == "slo:sli_error:ratio_rate30d"
    assert "count_over_time" in period["expr"]


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="servescope")
    sub = parser.add_subparsers(dest="command", required=True)
    slo_command.register(sub)
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_slo_generate_check_reports_drift(tmp_path, capsys) -> None:
    assert _cli("slo", "generate", "--check") == 0
    stale = tmp_path / "rules.yml"
    stale.write_text(GENERATED.read_text() + "# hand edit\n")
    assert _cli("slo", "generate", "--check", "--out", str(stale)) == 1
    assert "out of date" in capsys.readouterr().err
    assert _cli("slo", "generate", "--out", str(stale)) == 0
    assert stale.read_text() == GENERATED.read_text()


def test_slo_generate_writes_to_stdout_and_validate_summarises(capsys) -> None:
    assert _cli("slo", "generate", "--out", "-") == 0
    assert capsys.readouterr().out == GENERATED.read_text()
    assert _cli("slo", "validate") == 0
    out = capsys.readouterr().out
    assert "servescope-predictions-availability objective 99.9% over 30d" in out
    assert "ServescopePredictionsLatencyBudgetBurn" in out


def test_generated_file_names_its_sources_with_repository_paths() -> None:
    header = GENERATED.read_text().splitlines()[0]
    assert "deploy/prometheus/slos/servescope.yml" in header
    assert str(ROOT) not in GENERATED.read_text()


# --- a learner's (or a fork's) spec: Sloth's multi-document files, own metrics, extra labels ---

OWN_METRIC_SPEC = """\
version: prometheus/v1
service: myservice
labels:
  owner: myteam
slos:
  - name: requests-availability
    objective: 99.9
    sli:
      events:
        error_query: sum(rate(http_request_duration_seconds_count{job="myservice",code=~"(5..|429)"}[{{.window}}]))
        total_query: sum(rate(http_request_duration_seconds_count{job="myservice"}[{{.window}}]))
    alerting:
      name: MyServiceHighErrorRate
      page_alert:
        labels:
          severity: page
      ticket_alert:
        labels:
          severity: ticket
"""


def _multi_document(tmp_path):
    """Sloth's multi-document spec file: the project's own spec, then one on a metric the
    contract does not know (the shape of Sloth's examples/multifile.yml)."""
    path = tmp_path / "multi.yml"
    path.write_text(SPEC.read_text() + "\n---\n" + OWN_METRIC_SPEC + "---\n")
    return path


def test_a_multi_document_spec_file_yields_the_slos_of_every_document(tmp_path) -> None:
    path = _multi_document(tmp_path)
    warnings: list[str] = []
    slos = slo.load_file(path, strict=False, warnings=warnings)
    assert [s.id for s in slos] == [
        "servescope-predictions-availability",
        "servescope-predictions-latency",
        "myservice-requests-availability",
    ]
    assert slos[2].source.endswith("multi.yml (document 2)")
    # The project's own documents render exactly as from their own file.
    own = slo.render(slo.load_file(SPEC), ["x"])
    assert slo.render(slos[:2], ["x"]) == own


def test_an_unknown_metric_warns_and_is_refused_only_with_strict(tmp_path, capsys) -> None:
    path = _multi_document(tmp_path)
    out = tmp_path / "rules.yml"
    assert _cli("slo", "generate", str(path), "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert "warning:" in err
    assert "http_request_duration_seconds_count is not declared in the telemetry contract" in err
    assert "--strict" in err
    names = {g["name"] for g in yaml.safe_load(out.read_text())["groups"]}
    assert "sloth-slo-alerts-myservice-requests-availability" in names
    assert _cli("slo", "validate", str(path)) == 0
    assert "myservice-requests-availability objective 99.9%" in capsys.readouterr().out

    strict_out = tmp_path / "strict.yml"
    assert _cli("slo", "generate", "--strict", str(path), "--out", str(strict_out)) == 1
    assert "error:" in capsys.readouterr().err
    assert not strict_out.exists()
    assert _cli("slo", "validate", "--strict", str(path)) == 1


def test_non_strict_still_refuses_what_is_wrong_on_a_contract_metric() -> None:
    spec = yaml.safe_load(SPEC.read_text())
    latency = spec["slos"][1]["sli"]["events"]
    latency["error_query"] = latency["error_query"].replace('le="0.5"', 'le="0.4"')
    with pytest.raises(slo.SLOError, match="not a bucket boundary"):
        slo.parse_spec(spec, "inline", strict=False, warnings=[])


def test_the_project_generation_is_strict(monkeypatch) -> None:
    calls: list[bool] = []
    real = slo.load_all

    def spy(paths, contract=None, *, strict=True, warnings=None):
        calls.append(strict)
        return real(paths, contract, strict=strict, warnings=warnings)

    monkeypatch.setattr(slo, "load_all", spy)
    assert generators(ROOT)["deploy/prometheus/rules/slos.generated.yml"]() == GENERATED.read_text()
    assert calls == [True]


def test_extra_labels_go_on_every_generated_rule(tmp_path, capsys) -> None:
    path = _multi_document(tmp_path)
    out = tmp_path / "rules.yml"
    assert (
        _cli(
            "slo",
            "generate",
            str(path),
            "--out",
            str(out),
            "--extra-labels",
            "team=ml-platform",
            "--extra-labels",
            "owner=sre",
        )
        == 0
    )
    capsys.readouterr()
    groups = yaml.safe_load(out.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all(rule["labels"]["team"] == "ml-platform" for rule in rules)
    # An extra label wins over the spec's own, as in Sloth.
    assert all(rule["labels"]["owner"] == "sre" for rule in rules)
    assert any("alert" in rule for rule in rules)
    assert "--extra-labels" in out.read_text().splitlines()[9]
    promtool = tool("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(out)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [("team", "expected KEY=VALUE"), ("bad-name=x", "not a valid"), ("sloth_id=x", "reserved")],
)
def test_bad_extra_labels_are_refused(value, message, capsys) -> None:
    assert _cli("slo", "generate", "--out", "-", "--extra-labels", value) == 1
    assert message in capsys.readouterr().err


def test_the_30d_sli_is_errors_over_events_the_documented_departure() -> None:
    (availability, _) = slo.load_file(SPEC)
    period = {r["record"]: r["expr"] for r in slo.sli_rules(availability)}
    assert "avg_over_time(slo:sli_error_events:rate5m" in period["slo:sli_error_events:rate30d"]
    assert "avg_over_time(slo:sli_total_events:rate5m" in period["slo:sli_total_events:rate30d"]
    assert period["slo:sli_error:ratio_rate30d"].startswith("slo:sli_error_events:rate30d")
    assert "deliberate departure" in slo.__doc__
