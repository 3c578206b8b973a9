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
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from servescope.cli.local.services import (
    LocalStackError,
    http_get,
    port_is_free,
    stop_process,
    wait_until_ready,
)
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


@dataclass
class AlertmanagerProcess:
    """A real Alertmanager (Debian's binary), single node, on 127.0.0.1."""

    port: int
    run_dir: Path
    config: dict[str, Any]
    binary: str | None = None
    process: subprocess.Popen[bytes] | None = None
    name: str = "alertmanager"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "alertmanager.log"

    @staticmethod
    def available() -> bool:
        return alertmanager_binary() is not None

    def start(self, timeout: float = 30.0) -> None:
        binary = self.binary or alertmanager_binary()
        if binary is None:
            raise LocalStackError(ALERTMANAGER_INSTALL_HINT)
        if not port_is_free(self.port):
            raise LocalStackError(f"port {self.port} for Alertmanager is taken; pick another")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.run_dir / "alertmanager.yml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.path={self.run_dir / 'alertmanager-data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    # Single node: no gossip listener on 0.0.0.0:9094.
                    "--cluster.listen-address=",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_until_ready(
                self.url + "/-/ready", self.process, "Alertmanager", self.log_path, timeout
            )
        except LocalStackError:
            self.stop()
            raise

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds now (API v2)."""
        status, body = http_get(self.url + "/api/v2/alerts", timeout=2)
        if status != 200:
            return []
        alerts: list[dict[str, Any]] = json.loads(body)
        return alerts

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        return stop_process(self.process, timeout)


@dataclass
class ResponderProcess:
    """`servescope responder` as a process (python -m servescope.responder.app)."""

    port: int
    run_dir: Path
    prometheus_url: str
    incident_dir: Path | None = None
    window: str = "5m"
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    name: str = "responder"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "responder.log"

    @property
    def incidents_path(self) -> Path:
        return self.incident_dir or self.run_dir / "incidents"

    def start(self, timeout: float = 30.0) -> None:
        if not port_is_free(self.port):
            raise LocalStackError(f"port {self.port} for the responder is taken; pick another")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "servescope.responder.app",
                    "--host=127.0.0.1",
                    f"--port={self.port}",
                    f"--prometheus-url={self.prometheus_url}",
                    f"--incident-dir={self.incidents_path}",
                    f"--window={self.window}",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_until_ready(
                self.url + "/healthz", self.process, "responder", self.log_path, timeout
            )
        except LocalStackError:
            self.stop()
            raise

    def incidents(self) -> list[dict[str, Any]]:
        """The full incident notes written so far, oldest first."""
        notes: list[dict[str, Any]] = []
        for path in sorted(self.incidents_path.glob("*.json")):
            with contextlib.suppress(OSError, json.JSONDecodeError):
                notes.append(json.loads(path.read_text()))
        return notes

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        return stop_process(self.process, timeout)


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

    def processes(self) -> list[AlertmanagerProcess | ResponderProcess]:
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
