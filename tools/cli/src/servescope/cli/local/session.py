"""Local mode as a whole: the services, Prometheus, Alertmanager, the responder and traffic.

`servescope up` is this module plus a signal handler: `LocalSession.start()` brings the
pieces up in dependency order (downstreams, edge, responder and Alertmanager, Prometheus,
traffic), `watch()` reports the first that dies, `stop()` ends them in reverse. Each piece is
a `ManagedProcess`; what is optional (Prometheus, Alertmanager without their binaries) is
skipped with one line that says how to get it.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from servescope.cli.local.alerting import (
    DEFAULT_ALERTMANAGER_PORT,
    DEFAULT_RESPONDER_PORT,
    LocalAlerting,
)
from servescope.cli.local.process import LocalStackError, ManagedProcess
from servescope.cli.local.services import (
    DEFAULT_PORTS,
    PROMETHEUS_INSTALL_HINT,
    LocalStack,
    PrometheusProcess,
    prometheus_config,
)
from servescope.cli.paths import heldout_dir

DEFAULT_PROMETHEUS_PORT = 9090


class TrafficProcess(ManagedProcess):
    """The traffic generator (`python -m servescope.loadgen`) at a gentle, endless rate."""

    def __init__(self, run_dir: Path, url: str, rate: float, mix: str = "mixed") -> None:
        super().__init__("loadgen", 0, run_dir)
        self.target = url
        self.rate = rate
        self.mix = mix

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "servescope.loadgen",
            f"--heldout-dir={heldout_dir()}",
            f"--url={self.target}",
            f"--rate={self.rate:g}",
            "--duration=0",
            f"--mix={self.mix}",
        ]


def parse_fault(spec: str) -> tuple[str, str, str]:
    """SERVICE:STEP:SECONDS -> its parts; ValueError with the expected form otherwise."""
    parts = spec.split(":")
    try:
        service, step, seconds = parts
        float(seconds)
    except ValueError:
        raise ValueError(
            f"--fault {spec!r}: write SERVICE:STEP:SECONDS, e.g. preprocess:resize:0.5"
        ) from None
    if service not in DEFAULT_PORTS:
        raise ValueError(f"--fault {spec!r}: no service {service!r}")
    return service, step, seconds


@dataclass
class LocalSession:
    """Everything `servescope up` runs, with the choices its flags make."""

    run_dir: Path = field(default_factory=lambda: Path(".run"))
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    prometheus_port: int | None = DEFAULT_PROMETHEUS_PORT  # None: no Prometheus
    alertmanager_port: int | None = DEFAULT_ALERTMANAGER_PORT  # None: no alerting
    responder_port: int = DEFAULT_RESPONDER_PORT
    rate: float = 2.0  # traffic per second; 0 for none
    faults: list[str] = field(default_factory=list)  # SERVICE:STEP:SECONDS
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    say: Callable[[str], None] = print

    stack: LocalStack | None = None
    prometheus: PrometheusProcess | None = None
    alerting: LocalAlerting | None = None
    traffic: TrafficProcess | None = None
    notes: list[str] = field(default_factory=list)  # why an optional piece did not start

    def service_env(self) -> dict[str, dict[str, str]]:
        """Local mode keeps every trace and log line (a learner's traffic is small, and the
        point is to read one slow request whole), and enables faults with a fresh token."""
        token = secrets.token_urlsafe(24)
        self.token_file.write_text(token)
        self.token_file.chmod(0o600)
        env = {
            name: {
                "SERVESCOPE_TRACE_FILE": str(self.run_dir / "traces" / f"{name}.jsonl"),
                "SERVESCOPE_TRACE_SAMPLE_RATIO": "1.0",
                "SERVESCOPE_LOG_INFO_SAMPLE_RATIO": "1.0",
                "SERVESCOPE_ADMIN_TOKEN": token,
            }
            for name in self.ports
        }
        for spec in self.faults:
            service, step, seconds = parse_fault(spec)
            env[service]["SERVESCOPE_FAULT_STAGE"] = step
            env[service]["SERVESCOPE_FAULT_DELAY_SECONDS"] = seconds
        for name, extra in self.extra_env.items():
            env.setdefault(name, {}).update(extra)
        return env

    @property
    def token_file(self) -> Path:
        return self.run_dir / "admin-token"

    def start(self, timeout: float = 60.0) -> None:
        """Start everything; LocalStackError (nothing left running) if a service cannot."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stack = LocalStack(ports=self.ports, run_dir=self.run_dir, env=self.service_env())
        self.stack.check_ports()
        # Fresh logs for each run, so what a learner reads is this run's story.
        for old in [*self.run_dir.glob("*.log"), *self.run_dir.glob("traces/*.jsonl")]:
            old.unlink()
        self.stack.start(timeout=timeout)
        try:
            self._start_observability()
            if self.rate > 0:
                self.traffic = TrafficProcess(self.run_dir, self.stack.url, self.rate)
                self.traffic.launch()
        except BaseException:
            self.stop()
            raise

    def _start_observability(self) -> None:
        if self.prometheus_port is None:
            return
        if not PrometheusProcess.available():
            self.notes.append(PROMETHEUS_INSTALL_HINT)
            return
        prometheus_url = f"http://127.0.0.1:{self.prometheus_port}"
        if self.alertmanager_port is not None:
            # Alertmanager and its responder first, so Prometheus finds them ready.
            alerting = LocalAlerting(
                self.run_dir,
                prometheus_url=prometheus_url,
                alertmanager_port=self.alertmanager_port,
                responder_port=self.responder_port,
            )
            try:
                alerting.start()
                self.alerting = alerting
            except LocalStackError as exc:
                self.notes.append(f"{exc}; continuing without Alertmanager")
        assert self.stack is not None
        config = prometheus_config(
            self.stack.ports,
            self.prometheus_port,
            alertmanager_port=self.alerting.alertmanager_port if self.alerting else None,
            responder_port=self.responder_port if self.alerting else None,
        )
        if self.alerting is None:
            config.pop("alerting", None)
        prometheus = PrometheusProcess(self.prometheus_port, self.run_dir, config)
        try:
            prometheus.start()
            self.prometheus = prometheus
        except LocalStackError as exc:
            self.notes.append(f"{exc}; continuing without Prometheus")
            if self.alerting:
                self.alerting.stop()
                self.alerting = None

    def processes(self) -> list[ManagedProcess]:
        found: list[ManagedProcess] = list(self.stack.services.values()) if self.stack else []
        found += self.alerting.processes() if self.alerting else []
        found += [p for p in (self.prometheus, self.traffic) if p is not None]
        return found

    def dead(self) -> list[ManagedProcess]:
        """The processes that should run and do not."""
        return [p for p in self.processes() if not p.running()]

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        if self.traffic:
            codes["loadgen"] = self.traffic.stop(timeout=5)
        if self.stack:
            codes.update(self.stack.stop())
        if self.prometheus:
            codes["prometheus"] = self.prometheus.stop()
        if self.alerting:
            codes.update(self.alerting.stop())
        return codes
