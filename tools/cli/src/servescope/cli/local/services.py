"""Local mode: the three services as real processes on 127.0.0.1.

`servescope up` and the integration tests start the stack through this one module, so what
the tests exercise is exactly what a learner runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from servescope.cli import relabel
from servescope.cli.local.process import LocalStackError as LocalStackError
from servescope.cli.local.process import ManagedProcess, http_get, port_is_free
from servescope.cli.local.process import free_port as free_port  # the stack's callers use both
from servescope.cli.paths import bundled_model, bundled_model_card, repo_root

# Start order: the edge last, so it finds its downstreams already listening.
SERVICES = ("classifier", "postprocess", "preprocess")
DEFAULT_PORTS = {"preprocess": 8000, "classifier": 8001, "postprocess": 8002}
# The services that read SERVESCOPE_MODEL_REPOSITORY; the edge learns models from the classifier.
MODEL_REPOSITORY_READERS = ("classifier", "postprocess")


class ServiceProcess(ManagedProcess):
    """One of the services (`python -m servescope.<name>`), ready when /readyz answers 200."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", f"servescope.{self.name}"]


# The scrape jobs the cost profile cuts: the app's. Prometheus's own and the exporter's
# series are what `servescope cost` measures with, and Kubernetes scrapes them elsewhere.
COST_PROFILE_JOBS = relabel.APP_JOBS

PROMETHEUS_INSTALL_HINT = (
    "Prometheus is not installed, so local mode runs without it. On Debian or Ubuntu: "
    "sudo apt-get install prometheus (or run `make up`, which installs it where it can)."
)


def prometheus_config(
    ports: dict[str, int],
    prometheus_port: int,
    scrape_interval: str | None = None,
    alertmanager_port: int | None = None,
    responder_port: int | None = None,
    exporter_port: int | None = None,
    cost_profile: bool = False,
) -> dict[str, Any]:
    """deploy/local/prometheus.yml with the targets moved to the ports actually used.

    With `alertmanager_port`, alerts go to the Alertmanager on that port of 127.0.0.1; with
    `responder_port`, the responder is scraped too; with `exporter_port`, local mode's
    cAdvisor and kube-state-metrics exporter (jobs `kubelet` and `kube-state-metrics`).
    With `cost_profile`, the services' jobs drop what nothing reads and refuse a scrape over
    the limits (deploy/prometheus/cost-profile.yml, the chart's ServiceMonitor's too);
    without it every series is kept, as the labs expect.
    """
    source = repo_root() / "deploy" / "local" / "prometheus.yml"
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    # Rule files are written relative to deploy/local/; the generated copy lives in .run/.
    config["rule_files"] = [
        str((source.parent / pattern).resolve()) for pattern in config.get("rule_files") or []
    ]
    ports = {**ports, "prometheus": prometheus_port}
    if responder_port is not None:
        ports["responder"] = responder_port
    if exporter_port is not None:
        ports["kubelet"] = ports["kube-state-metrics"] = exporter_port
    # A job whose process does not run here (the responder without alerting) is left out.
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["job_name"] in ports]
    for job in config["scrape_configs"]:
        port = ports[job["job_name"]]
        for static in job["static_configs"]:
            static["targets"] = [f"127.0.0.1:{port}"]
    if cost_profile:
        profile = relabel.load()
        for job in config["scrape_configs"]:
            if job["job_name"] in COST_PROFILE_JOBS:
                relabel.apply(job, profile)
    if alertmanager_port is not None:
        for alertmanager in config.get("alerting", {}).get("alertmanagers", []):
            for static in alertmanager.get("static_configs", []):
                static["targets"] = [f"127.0.0.1:{alertmanager_port}"]
    if scrape_interval:
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
        config["global"]["scrape_timeout"] = scrape_interval
    return config


class PrometheusProcess(ManagedProcess):
    """A real Prometheus (Debian's binary) scraping the local services."""

    ready_path = "/-/ready"

    def __init__(
        self, port: int, run_dir: Path, config: dict[str, Any], binary: str = "prometheus"
    ) -> None:
        super().__init__("prometheus", port, run_dir)
        self.config = config
        self.binary = binary

    @staticmethod
    def available(binary: str = "prometheus") -> bool:
        return shutil.which(binary) is not None

    def prepare(self) -> None:
        if not self.available(self.binary):
            raise LocalStackError(PROMETHEUS_INSTALL_HINT)
        (self.run_dir / "prometheus.yml").write_text(yaml.safe_dump(self.config, sort_keys=False))

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.run_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.run_dir / 'prometheus-data'}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--enable-feature=exemplar-storage",
            "--web.enable-lifecycle",
        ]

    def wait_for_targets(self, timeout: float = 30.0) -> None:
        """Block until every scrape target has been scraped successfully once.

        Prometheus hands discovered targets to its scrapers in batches every 5 s, so the
        first scrape can come several seconds after /-/ready.
        """
        deadline = time.monotonic() + timeout
        expected = len(self.config["scrape_configs"])
        while True:
            status, body = http_get(self.url + "/api/v1/targets?state=active", timeout=2)
            if status == 200:
                targets = json.loads(body)["data"]["activeTargets"]
                if len(targets) >= expected and all(t["health"] == "up" for t in targets):
                    return
            if time.monotonic() > deadline:
                raise LocalStackError(f"Prometheus targets not all up after {timeout:.0f} s")
            time.sleep(0.2)


@dataclass
class LocalStack:
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    run_dir: Path = field(default_factory=lambda: Path(".run"))
    # Extra environment per service (or "*" for all), e.g. a second model for the classifier.
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    # A model repository (`servescope models build`) served beside the bundled model.
    model_repository: Path | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SERVESCOPE_")}
        for name in SERVICES:
            env = {
                **base,
                "SERVESCOPE_PORT": str(self.ports[name]),
                "SERVESCOPE_HOST": "127.0.0.1",
                "SERVESCOPE_CLASSIFIER_URL": f"http://127.0.0.1:{self.ports['classifier']}",
                "SERVESCOPE_POSTPROCESS_URL": f"http://127.0.0.1:{self.ports['postprocess']}",
                # Services never look for the repository: local mode passes the model in.
                "SERVESCOPE_MODEL_PATH": str(bundled_model()),
                "SERVESCOPE_MODEL_CARDS": json.dumps([str(bundled_model_card())]),
                **self._repository_env(name),
                **self.env.get("*", {}),
                **self.env.get(name, {}),
            }
            self.services[name] = ServiceProcess(name, self.ports[name], self.run_dir, env)

    def _repository_env(self, name: str) -> dict[str, str]:
        """The classifier serves every model of the repository, postprocess reads its cards."""
        if self.model_repository is None or name not in MODEL_REPOSITORY_READERS:
            return {}
        return {"SERVESCOPE_MODEL_REPOSITORY": str(self.model_repository.resolve())}

    @property
    def url(self) -> str:
        """The public edge."""
        return self.services["preprocess"].url

    def check_ports(self) -> None:
        taken = [f"{n} ({s.port})" for n, s in self.services.items() if not port_is_free(s.port)]
        if taken:
            raise LocalStackError(
                "ports already in use: "
                + ", ".join(taken)
                + ". Stop whatever holds them (is another `servescope up` running?) or choose "
                "other ports with --port-preprocess/--port-classifier/--port-postprocess."
            )

    def start(self, timeout: float = 30.0) -> None:
        self.check_ports()
        try:
            for name in SERVICES:
                self.services[name].launch()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 30.0, names: tuple[str, ...] = SERVICES) -> None:
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            for name in list(pending):
                service = self.services[name]
                if not service.running():
                    raise LocalStackError(
                        f"{name} exited during startup (code {service.exit_code()}); "
                        f"last lines of {service.log_path}:\n{service.log_tail()}"
                    )
                if http_get(service.url + "/readyz", timeout=0.5)[0] == 200:
                    pending.remove(name)
            if pending and time.monotonic() > deadline:
                raise LocalStackError(
                    f"not ready after {timeout:.0f} s: {', '.join(pending)}; see "
                    + ", ".join(str(self.services[n].log_path) for n in pending)
                )
            if pending:
                time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        # The edge first, so nothing new reaches the downstreams while they drain.
        for name in reversed(SERVICES):
            with contextlib.suppress(Exception):
                codes[name] = self.services[name].stop(timeout)
        return codes

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
