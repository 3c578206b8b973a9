"""Alerting in local mode: a real Alertmanager and the responder, beside Prometheus.

`servescope up` and the tests start them through this module, like the services and
Prometheus through servescope.cli.local.services: Debian's `prometheus-alertmanager` with
deploy/alertmanager/alertmanager.yml (webhooks pointed at the responder's port), and
`servescope responder` as a process. Start them before Prometheus, so Prometheus finds
Alertmanager ready when the first alert fires.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from servescope.cli.local.process import LocalStackError, ManagedProcess, http_get
from servescope.cli.paths import repo_root

ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")
ALERTMANAGER_INSTALL_HINT = (
    "Alertmanager is not installed, so local mode runs without it. On Debian or Ubuntu: "
    "sudo apt-get install prometheus-alertmanager (or run `make up`, which installs it "
    "where it can)."
)
DEFAULT_ALERTMANAGER_PORT = 9093
DEFAULT_RESPONDER_PORT = 9095


def alertmanager_binary() -> str | None:
    for name in ALERTMANAGER_BINARIES:
        if shutil.which(name):
            return name
    return None


def alertmanager_config(responder_port: int | None = None, fast: bool = False) -> dict[str, Any]:
    """deploy/alertmanager/alertmanager.yml, its webhooks sent to the responder's port.

    `fast` shortens grouping waits to a second, for tests that wait for a notification.
    """
    source = repo_root() / "deploy" / "alertmanager" / "alertmanager.yml"
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    if responder_port is not None:
        for receiver in config.get("receivers", []):
            for webhook in receiver.get("webhook_configs", []):
                webhook["url"] = f"http://127.0.0.1:{responder_port}/alerts"
    if fast:
        routes = [config["route"], *config["route"].get("routes", [])]
        for route in routes:
            route["group_wait"] = "1s"
            route["group_interval"] = "1s"
            route["repeat_interval"] = "1h"
    return config


class AlertmanagerProcess(ManagedProcess):
    """A real Alertmanager (Debian's binary), single node, on 127.0.0.1."""

    ready_path = "/-/ready"

    def __init__(
        self, port: int, run_dir: Path, config: dict[str, Any], binary: str | None = None
    ) -> None:
        super().__init__("alertmanager", port, run_dir)
        self.config = config
        self.binary = binary

    @staticmethod
    def available() -> bool:
        return alertmanager_binary() is not None

    def prepare(self) -> None:
        self.binary = self.binary or alertmanager_binary()
        if self.binary is None:
            raise LocalStackError(ALERTMANAGER_INSTALL_HINT)
        (self.run_dir / "alertmanager.yml").write_text(yaml.safe_dump(self.config, sort_keys=False))

    def command(self) -> list[str]:
        assert self.binary is not None  # prepare() found it
        return [
            self.binary,
            f"--config.file={self.run_dir / 'alertmanager.yml'}",
            f"--storage.path={self.run_dir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Single node: no gossip listener on 0.0.0.0:9094.
            "--cluster.listen-address=",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds now (API v2)."""
        status, body = http_get(self.url + "/api/v2/alerts", timeout=2)
        if status != 200:
            return []
        alerts: list[dict[str, Any]] = json.loads(body)
        return alerts


class ResponderProcess(ManagedProcess):
    """The alert responder service (`python -m servescope.responder`), settings in its env."""

    def __init__(
        self,
        port: int,
        run_dir: Path,
        prometheus_url: str,
        incident_dir: Path | None = None,
        window: str = "5m",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.incidents_path = incident_dir or run_dir / "incidents"
        base = {k: v for k, v in os.environ.items() if not k.startswith("SERVESCOPE_")}
        env = {
            **base,
            "SERVESCOPE_HOST": "127.0.0.1",
            "SERVESCOPE_PORT": str(port),
            "SERVESCOPE_LOG_INFO_SAMPLE_RATIO": "1.0",
            "SERVESCOPE_TRACE_SAMPLE_RATIO": "1.0",
            "SERVESCOPE_RESPONDER_PROMETHEUS_URL": prometheus_url,
            "SERVESCOPE_RESPONDER_INCIDENT_DIR": str(self.incidents_path),
            "SERVESCOPE_RESPONDER_WINDOW": window,
            "SERVESCOPE_RESPONDER_RUNBOOK_DIR": str(repo_root() / "runbooks"),
            **(extra_env or {}),
        }
        super().__init__("responder", port, run_dir, env)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "servescope.responder"]

    def incidents(self) -> list[dict[str, Any]]:
        """The full incident notes written so far, oldest first."""
        notes: list[dict[str, Any]] = []
        for path in sorted(self.incidents_path.glob("*.json")):
            with contextlib.suppress(OSError, json.JSONDecodeError):
                notes.append(json.loads(path.read_text()))
        return notes


@dataclass
class LocalAlerting:
    """Alertmanager and the responder for `servescope up`; start before Prometheus."""

    run_dir: Path
    prometheus_url: str
    alertmanager_port: int = DEFAULT_ALERTMANAGER_PORT
    responder_port: int = DEFAULT_RESPONDER_PORT
    fast: bool = False
    responder_window: str = "5m"
    alertmanager: AlertmanagerProcess | None = None
    responder: ResponderProcess | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Raises LocalStackError (with what to do) when Alertmanager cannot run."""
        if not AlertmanagerProcess.available():
            raise LocalStackError(ALERTMANAGER_INSTALL_HINT)
        try:
            self.responder = ResponderProcess(
                self.responder_port, self.run_dir, self.prometheus_url, window=self.responder_window
            )
            self.responder.start(timeout)
            self.alertmanager = AlertmanagerProcess(
                self.alertmanager_port,
                self.run_dir,
                alertmanager_config(self.responder_port, fast=self.fast),
            )
            self.alertmanager.start(timeout)
        except BaseException:
            self.stop()
            raise

    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.alertmanager, self.responder) if p is not None]

    def stop(self, timeout: float = 15.0) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        if self.alertmanager is not None:
            codes["alertmanager"] = self.alertmanager.stop(timeout)
        if self.responder is not None:
            codes["responder"] = self.responder.stop(timeout)
        return codes


def with_rule_files(config: dict[str, Any], rule_files: list[str]) -> dict[str, Any]:
    """A copy of a Prometheus config that loads exactly these rule files."""
    copied = copy.deepcopy(config)
    copied["rule_files"] = list(rule_files)
    return copied
