"""Local mode as a whole: the services, Prometheus, Alertmanager, the responder and traffic.

`servescope up` is this module plus a signal handler: `LocalSession.start()` brings the
pieces up in dependency order (downstreams, edge, responder and Alertmanager, Prometheus,
traffic), `watch()` reports the first that dies, `stop()` ends them in reverse. Each piece is
a `ManagedProcess`; what is optional (Prometheus, Alertmanager without their binaries) is
skipped with one line that says how to get it.
"""

from __future__ import annotations

import json
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
from servescope.cli.local.cgroups import Limits
from servescope.cli.local.containers import ContainerRuntime
from servescope.cli.local.process import LocalStackError, ManagedProcess, port_is_free
from servescope.cli.local.services import (
    DEFAULT_PORTS,
    PROMETHEUS_INSTALL_HINT,
    LocalStack,
    PrometheusProcess,
    prometheus_config,
)
from servescope.cli.local.supervisor import BACKOFF_BASE_SECONDS
from servescope.cli.local.viewers import DEFAULT_GRAFANA_PORT, LocalViewers
from servescope.cli.paths import heldout_dir, model_repository_dir, repo_root
from servescope.telemetry.faultspec import KINDS, FaultSpecError
from servescope.telemetry.faultspec import parse as parse_fault_spec
from servescope.telemetry.pipeline import PIPELINE

DEFAULT_PROMETHEUS_PORT = 9090
DEFAULT_EXPORTER_PORT = 9096


class TrafficProcess(ManagedProcess):
    """The traffic generator (`python -m servescope.loadgen`) at a gentle, endless rate;
    with a model repository, spread over its models with a Zipf popularity."""

    def __init__(
        self,
        run_dir: Path,
        url: str,
        rate: float,
        mix: str = "mixed",
        model_repository: Path | None = None,
    ) -> None:
        super().__init__("loadgen", 0, run_dir)
        self.target = url
        self.rate = rate
        self.mix = mix
        self.model_repository = model_repository

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
        ] + (
            [f"--model-repository={self.model_repository.resolve()}"]
            if self.model_repository is not None
            else []
        )


def ensure_model_repository(
    count: int, directory: Path | None = None, say: Callable[[str], None] = print
) -> Path:
    """A model repository of `count` models at `directory` (default: build/models): the one
    there when its index says it holds `count`, else built by `servescope models build`
    (reproducible, seconds)."""
    from servescope.cli.model_repository import INDEX, BuildError, build_repository  # lazily

    directory = directory or model_repository_dir()
    try:
        if json.loads((directory / INDEX).read_text())["count"] == count:
            return directory
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none there, or not a complete one: build it
    say(f"building {count} models into {directory} (servescope models build) ...")
    try:
        build_repository(directory, count)
    except BuildError as exc:
        raise LocalStackError(f"cannot build the model repository: {exc}") from exc
    return directory


FAULT_FORM = (
    "write SERVICE:KIND[:STEP][:VALUE], e.g. preprocess:delay:resize:0.5, "
    "classifier:cache:infer:4Mi, postprocess:crash:100 (the older SERVICE:STEP:SECONDS is a delay)"
)


def parse_fault(spec: str) -> tuple[str, str]:
    """SERVICE:KIND[:STEP][:VALUE] (or the older SERVICE:STEP:SECONDS, a delay) -> the
    service and its SERVESCOPE_FAULTS item; ValueError listing the valid forms otherwise."""
    service, _, rest = spec.partition(":")
    if service not in DEFAULT_PORTS:
        raise ValueError(
            f"--fault {spec!r}: no service {service!r} (services: {', '.join(DEFAULT_PORTS)}); "
            + FAULT_FORM
        )
    steps = PIPELINE.fault_steps(service)
    parts = rest.split(":")
    if len(parts) == 2 and parts[0] in steps and parts[0] not in KINDS:
        rest = f"delay:{rest}"
    try:
        return service, str(parse_fault_spec(rest, steps))
    except FaultSpecError as exc:
        raise ValueError(f"--fault {spec!r}: {exc}; {FAULT_FORM}") from None


@dataclass
class LocalSession:
    """Everything `servescope up` runs, with the choices its flags make."""

    run_dir: Path = field(default_factory=lambda: Path(".run"))
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    prometheus_port: int | None = DEFAULT_PROMETHEUS_PORT  # None: no Prometheus
    alertmanager_port: int | None = DEFAULT_ALERTMANAGER_PORT  # None: no alerting
    responder_port: int = DEFAULT_RESPONDER_PORT
    rate: float = 2.0  # traffic per second; 0 for none
    faults: list[str] = field(default_factory=list)  # SERVICE:KIND[:STEP][:VALUE]
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)
    # Resource limits per service (`up --limit`, a lab's setup): each service runs in its own
    # memory and CPU cgroup where the kernel lets local mode make one (limited or not, so its
    # cAdvisor series exist), under a supervisor that restarts it with kubelet's back-off.
    limits: dict[str, Limits] = field(default_factory=dict)
    cgroup_root: Path | None = None  # None: $SERVESCOPE_CGROUP_ROOT or /sys/fs/cgroup
    supervise: bool = True
    backoff_base: float = BACKOFF_BASE_SECONDS
    exporter_port: int | None = DEFAULT_EXPORTER_PORT  # None: no cAdvisor/KSM exporter
    say: Callable[[str], None] = print
    grafana_port: int | None = DEFAULT_GRAFANA_PORT  # None: no Grafana (local/viewers.py)
    jaeger: bool = True  # Jaeger all-in-one when its binary is on PATH
    viewers: LocalViewers | None = None
    # A model repository to serve beside the bundled model (classifier and postprocess), its
    # models the traffic's targets; None: the bundled model alone.
    model_repository: Path | None = None
    # Prometheus with the cost profile's relabel rules and limits (`servescope cost`).
    cost_profile: bool = False

    stack: LocalStack | None = None
    prometheus: PrometheusProcess | None = None
    alerting: LocalAlerting | None = None
    traffic: TrafficProcess | None = None
    notes: list[str] = field(default_factory=list)  # why an optional piece did not start
    containers: ContainerRuntime | None = None  # cgroups, supervisor, exporter

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
            service, item = parse_fault(spec)
            faults = env[service].get("SERVESCOPE_FAULTS")
            env[service]["SERVESCOPE_FAULTS"] = f"{faults},{item}" if faults else item
        for name in self.ports:  # export to Jaeger too, when one runs
            env[name].update(self.viewers.service_env() if self.viewers else {})
        for name, extra in self.extra_env.items():
            env.setdefault(name, {}).update(extra)
        return env

    @property
    def token_file(self) -> Path:
        return self.run_dir / "admin-token"

    def start(self, timeout: float = 60.0) -> None:
        """Start everything; LocalStackError (nothing left running) if a service cannot."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.viewers = LocalViewers(
            self.run_dir, repo_root(), grafana_port=self.grafana_port, jaeger=self.jaeger
        )
        self.stack = LocalStack(
            ports=self.ports, run_dir=self.run_dir, env={}, model_repository=self.model_repository
        )
        self.stack.check_ports()
        # Fresh logs for each run, so what a learner reads is this run's story.
        for old in [*self.run_dir.glob("*.log"), *self.run_dir.glob("traces/*.jsonl")]:
            old.unlink()
        self.viewers.start_jaeger()  # before the services, which export to it
        try:
            self.stack = LocalStack(
                ports=self.ports,
                run_dir=self.run_dir,
                env=self.service_env(),
                model_repository=self.model_repository,
            )
            self.containers = ContainerRuntime(
                self.stack.services,
                limits=self.limits,
                cgroup_root=self.cgroup_root,
                backoff_base=self.backoff_base,
                supervise=self.supervise,
                say=self.say,
            )
            self.containers.prepare()
            if self.containers.notice:
                self.notes.append(self.containers.notice)
            self.stack.start(timeout=timeout)
        except BaseException:
            self.viewers.stop()
            if self.containers:
                self.containers.close()
            raise
        try:
            exporter_port = self.exporter_port
            if exporter_port is not None and not port_is_free(exporter_port):
                exporter_port = 0  # any free port; Prometheus is told which
            self.containers.start(exporter_port)
            self._start_observability()
            self.viewers.start_grafana(self.prometheus.url if self.prometheus else None)
            self.notes += self.viewers.notes
            if self.rate > 0:
                self.traffic = TrafficProcess(
                    self.run_dir, self.stack.url, self.rate, model_repository=self.model_repository
                )
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
            exporter_port=self.containers.exporter.port
            if self.containers and self.containers.exporter
            else None,
            cost_profile=self.cost_profile,
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
        found += self.viewers.processes() if self.viewers else []
        return found

    def dead(self) -> list[ManagedProcess]:
        """The processes that should run and do not."""
        containers = self.containers
        return [
            p
            for p in self.processes()
            if not p.running() and not (containers and containers.supervises(p))
        ]

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        if self.containers:
            self.containers.stop_supervising()  # nothing restarts while it all stops
        if self.traffic:
            codes["loadgen"] = self.traffic.stop(timeout=5)
        if self.stack:
            codes.update(self.stack.stop())
        if self.prometheus:
            codes["prometheus"] = self.prometheus.stop()
        if self.alerting:
            codes.update(self.alerting.stop())
        if self.viewers:
            codes.update(self.viewers.stop())
        if self.containers:
            self.containers.close()
        return codes
