"""End to end: a slow step in preprocess, the latency alert delivered, diagnosed, resolved.

Real processes on 127.0.0.1: the three services, Prometheus (scraping every second),
Alertmanager (grouping waits of a second) and the responder. Preprocess starts with the
slow-stage fault switched on by its environment (SERVESCOPE_FAULT_STAGE=resize,
SERVESCOPE_FAULT_DELAY_SECONDS=0.3); traffic flows; ServescopeP95LatencyHigh fires and
reaches the responder, whose incident note must name preprocess, its `preprocess` stage
and the `resize` step, link the runbook, and list trace ids we sent. Preprocess is then
restarted without the fault, and the resolve notification must close the note.

Prometheus loads a test copy of the production rule, made from it by substitution (the
5-minute window and `for` shortened to seconds), so the expression, labels and annotations
under test are the production ones and the test ends in well under a minute.
"""

from __future__ import annotations

import contextlib
import copy
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from servescope.cli.local.alerting import LocalAlerting, with_rule_files
from servescope.cli.local.services import PrometheusProcess, free_port, prometheus_config
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples

from .conftest import RULES_DIR, tool

pytestmark = pytest.mark.slow

ALERT = "ServescopeP95LatencyHigh"
FAULT = {"SERVESCOPE_FAULT_STAGE": "resize", "SERVESCOPE_FAULT_DELAY_SECONDS": "0.3"}
WINDOW = "10s"
FOR = "4s"


def fast_copy(alert: str, window: str, hold: str) -> dict[str, Any]:
    """The production rule group holding `alert`, with only that alert, on short windows."""
    source = yaml.safe_load((RULES_DIR / "latency.alerts.yml").read_text())
    for group in source["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") != alert:
                continue
            fast = copy.deepcopy(rule)
            fast["expr"], count = re.subn(r"\[5m\]", f"[{window}]", rule["expr"])
            assert count == 1, "the rule's window is no longer [5m]: update this test"
            assert rule["for"] == "5m"
            fast["for"] = hold
            return {"groups": [{"name": f"{group['name']}-fast", "rules": [fast]}]}
    raise AssertionError(f"{alert} not found")


class Traffic:
    """Predictions from a few threads, each with a traceparent we remember."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.stop = threading.Event()
        self.trace_ids: set[str] = set()
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.body = heldout_samples(heldout_dir())[0].body

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                trace_id = uuid.uuid4().hex
                self.trace_ids.add(trace_id)
                try:
                    client.post(
                        self.url + "/v1/predict",
                        content=self.body,
                        headers={
                            "Content-Type": "image/png",
                            "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01",
                        },
                    )
                    self.sent += 1
                except httpx.HTTPError:
                    time.sleep(0.05)  # preprocess restarting

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


def _wait(predicate, timeout: float, what: str, diagnose) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{diagnose()}")


def test_the_latency_alert_is_delivered_diagnosed_and_resolved(start_stack, tmp_path: Path):
    tool("prometheus")
    tool("prometheus-alertmanager")
    started = time.monotonic()
    stack = start_stack(env={"preprocess": dict(FAULT)})
    rules = tmp_path / "latency-fast.rules.yml"
    rules.write_text(yaml.safe_dump(fast_copy(ALERT, WINDOW, FOR), sort_keys=False))

    prometheus_port = free_port()
    alerting = LocalAlerting(
        tmp_path / "alerting",
        prometheus_url=f"http://127.0.0.1:{prometheus_port}",
        alertmanager_port=free_port(),
        responder_port=free_port(),
        fast=True,
        responder_window="15s",
    )
    prometheus = PrometheusProcess(
        prometheus_port,
        tmp_path / "prometheus",
        with_rule_files(
            prometheus_config(
                stack.ports, prometheus_port, "1s", alertmanager_port=alerting.alertmanager_port
            ),
            [str(rules)],
        ),
    )

    def diagnose() -> str:
        parts = []
        for name, path in [
            ("responder", tmp_path / "alerting" / "responder.log"),
            ("alertmanager", tmp_path / "alerting" / "alertmanager.log"),
            ("prometheus", prometheus.log_path),
        ]:
            with contextlib.suppress(OSError):
                parts.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-15:]))
        with contextlib.suppress(Exception):
            parts.append(
                "--- prometheus alerts\n"
                + httpx.get(prometheus.url + "/api/v1/alerts", timeout=2).text
            )
        return "\n".join(parts)

    try:
        # Alertmanager first, so Prometheus finds it ready when the alert fires.
        alerting.start()
        prometheus.start()
        prometheus.wait_for_targets()
        responder = alerting.responder
        assert responder is not None

        with Traffic(stack.url) as traffic:

            def firing() -> list[dict]:
                return [n for n in responder.incidents() if n["alertname"] == ALERT]

            (note,) = _wait(firing, 40, f"{ALERT} to reach the responder", diagnose)
            fired_after = time.monotonic() - started
            assert note["status"] == "firing"
            assert note["labels"]["severity"] == "page"
            assert note["labels"]["service"] == "preprocess"
            assert note["notifications"][0]["receiver"] == "page"
            culprit = note["culprit"]
            assert culprit["service"] == "preprocess", culprit
            assert culprit["stage"] == "preprocess", culprit
            assert culprit["step"] == "resize", culprit
            assert note["runbook"]["exists"] is True
            assert note["runbook"]["url"].endswith(f"runbooks/{ALERT}.md")
            traced = {t["trace_id"] for t in note["traces"]}
            assert traced & traffic.trace_ids, (traced, note.get("traces_error"))
            assert all(t["value"] >= 0.2 for t in note["traces"]), note["traces"]
            markdown = (responder.incidents_path / f"{note['id']}.md").read_text()
            assert "**preprocess**, stage `preprocess`, step `resize`" in markdown
            assert f"runbooks/{ALERT}.md" in markdown

            # Turn the fault off: restart preprocess without it.
            preprocess = stack.services["preprocess"]
            preprocess.stop(timeout=10)
            for key in FAULT:
                preprocess.env.pop(key)
            preprocess.start()
            stack.wait_ready(30, ("preprocess",))

            def resolved() -> list[dict]:
                return [n for n in firing() if n["status"] == "resolved"]

            (closed,) = _wait(resolved, 45, f"{ALERT} to resolve", diagnose)
        assert [n["status"] for n in closed["notifications"]] == ["firing", "resolved"]
        assert closed["resolved_at"]
        assert traffic.sent > 50
        print(
            f"fired {fired_after:.1f} s after the start, resolved "
            f"{time.monotonic() - started:.1f} s after it"
        )
    finally:
        prometheus.stop()
        alerting.stop()
