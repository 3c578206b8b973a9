"""Alertmanager's configuration: amtool accepts it, pages and tickets reach their
receivers, and a real Alertmanager inhibits what the rules say it should."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
import time
import urllib.request

import pytest
import yaml

from servescope.cli.local.alerting import AlertmanagerProcess, alertmanager_config
from servescope.cli.local.services import free_port

from .conftest import ALERTMANAGER_CONFIG, alerts, tool


def _routes(config_path, *labels: str, expect: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={config_path}",
            f"--verify.receivers={expect}",
            *labels,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_amtool_check_config_passes() -> None:
    result = subprocess.run(
        [tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 inhibit rules" in result.stdout


def test_the_config_local_mode_writes_passes_too(tmp_path) -> None:
    path = tmp_path / "alertmanager.yml"
    config = alertmanager_config(responder_port=19095, fast=True)
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [tool("amtool"), "check-config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    urls = {w["url"] for r in config["receivers"] for w in r["webhook_configs"]}
    assert urls == {"http://127.0.0.1:19095/alerts"}
    assert config["route"]["group_wait"] == "1s"


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (("alertname=ServescopeP95LatencyHigh", "severity=page", "service=preprocess"), "page"),
        (
            (
                "alertname=ServescopePredictionsAvailabilityBudgetBurn",
                "severity=page",
                "sloth_severity=page",
                "service=preprocess",
            ),
            "page",
        ),
        (("alertname=ServescopeInputDrift", "severity=ticket", "service=classifier"), "ticket"),
        (("alertname=SomethingElse",), "ticket"),
    ],
)
def test_amtool_routes_pages_and_tickets_to_their_receivers(labels, receiver) -> None:
    result = _routes(ALERTMANAGER_CONFIG, *labels, expect=receiver)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_amtool_notices_a_wrong_receiver() -> None:
    result = _routes(ALERTMANAGER_CONFIG, "severity=page", expect="ticket")
    assert result.returncode != 0


def test_every_alert_routes_by_its_severity() -> None:
    for _, rule in alerts():
        severity = rule["labels"]["severity"]
        result = _routes(
            ALERTMANAGER_CONFIG,
            f"alertname={rule['alert']}",
            f"severity={severity}",
            f"category={rule['labels']['category']}",
            expect=severity,
        )
        assert result.returncode == 0, (rule["alert"], result.stdout + result.stderr)


def test_grouping_is_by_alert_and_service() -> None:
    route = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["route"]
    assert route["group_by"] == ["alertname", "namespace", "service"]


def test_inhibitions_match_labels_the_alerts_carry() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    names = {rule["alert"] for _, rule in alerts()}
    categories = {rule["labels"]["category"] for _, rule in alerts()}
    target_down = config["inhibit_rules"][0]
    assert target_down["source_matchers"] == ['alertname="ServescopeTargetDown"']
    assert "ServescopeTargetDown" in names
    assert {"latency", "traffic"} <= categories
    assert set(target_down["equal"]) == {"namespace", "service"}


# --- a real Alertmanager --------------------------------------------------------------------


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    tool("prometheus-alertmanager")
    # Webhooks to a port nobody listens on: this test reads the API, not notifications.
    process = AlertmanagerProcess(
        free_port(), tmp_path_factory.mktemp("alertmanager"), alertmanager_config(free_port())
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _post(alertmanager: AlertmanagerProcess, *alerts: dict) -> None:
    now = dt.datetime.now(dt.UTC)
    body = [
        {
            "labels": labels,
            "annotations": {"summary": "test"},
            "startsAt": now.isoformat(),
            "endsAt": (now + dt.timedelta(minutes=5)).isoformat(),
        }
        for labels in alerts
    ]
    request = urllib.request.Request(
        alertmanager.url + "/api/v2/alerts",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def _states(alertmanager: AlertmanagerProcess, marker: str) -> dict[str, list[str]]:
    return {
        a["labels"]["alertname"] + "/" + a["labels"].get("severity", ""): a["status"]["inhibitedBy"]
        for a in alertmanager.alerts()
        if a["labels"].get("test") == marker
    }


def _until(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(AssertionError):
            return check()
        if time.monotonic() > deadline:
            return check()
        time.sleep(0.1)


def test_a_down_target_inhibits_its_latency_alerts_not_others(alertmanager) -> None:
    _post(
        alertmanager,
        {"alertname": "ServescopeTargetDown", "severity": "page", "category": "availability",
         "service": "preprocess", "test": "down"},
        {"alertname": "ServescopeP95LatencyHigh", "severity": "page", "category": "latency",
         "service": "preprocess", "test": "down"},
        {"alertname": "ServescopeNoTraffic", "severity": "ticket", "category": "traffic",
         "service": "preprocess", "test": "down"},
        # Another service's latency alert, and an error alert of the same service: kept.
        {"alertname": "ServescopeStageLatencyRegression", "severity": "ticket",
         "category": "latency", "service": "classifier", "test": "down"},
        {"alertname": "ServescopeErrorRatioHigh", "severity": "ticket", "category": "errors",
         "service": "preprocess", "test": "down"},
    )  # fmt: skip

    def check() -> None:
        states = _states(alertmanager, "down")
        assert len(states) == 5, states
        assert states["ServescopeP95LatencyHigh/page"], states
        assert states["ServescopeNoTraffic/ticket"], states
        assert not states["ServescopeTargetDown/page"], states
        assert not states["ServescopeStageLatencyRegression/ticket"], states
        assert not states["ServescopeErrorRatioHigh/ticket"], states

    _until(check)


def test_an_slo_page_inhibits_its_own_ticket(alertmanager) -> None:
    common = {
        "alertname": "ServescopePredictionsAvailabilityBudgetBurn",
        "category": "errors",
        "service": "preprocess",
        "sloth_slo": "predictions-availability",
        "test": "burn",
    }
    _post(
        alertmanager,
        {**common, "severity": "page", "sloth_severity": "page"},
        {**common, "severity": "ticket", "sloth_severity": "ticket"},
    )

    def check() -> None:
        states = _states(alertmanager, "burn")
        assert states.get(f"{common['alertname']}/ticket"), states
        assert not states.get(f"{common['alertname']}/page"), states

    _until(check)
