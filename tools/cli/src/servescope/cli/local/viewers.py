"""The viewers the skill guide names, in local mode when their binaries are on PATH.

The beginner stage ends at a Grafana dashboard and the intermediate one at a Jaeger
waterfall. `servescope up` starts both, the way it starts Prometheus, when it finds them:

* **Jaeger all-in-one** (`jaeger-all-in-one`, Jaeger 1.x, or `jaeger`, Jaeger 2.x) receives
  OTLP on 127.0.0.1:4318 (HTTP) and :4317 (gRPC) and serves its UI on :16686; it starts
  before the services, which then export to it over OTLP *and* keep writing the local trace
  files (`servescope trace`, the labs). Ready when its health endpoint answers 200: the
  admin port's `/` (1.x, :14269) or the health-check extension's `/status` (2.x, :13133).
* **Grafana** (`grafana-server`, or `grafana server`) with the repository's provisioning
  (deploy/local/grafana/provisioning: the Prometheus and Jaeger datasources, the dashboards
  of dashboards/), its data and logs under the run directory, anonymous read-only access
  and no phoning home. The provisioning is copied under the run directory with the
  datasource URLs pointed at the ports this run uses. Ready when `/api/health` answers 200.

Neither can be installed on the project's CI machines, so the tests run these exact command
lines against a stand-in binary that serves the health URL. Without them, `up` says in one
line how to get them and what stands in locally (`servescope dashboards render`,
`servescope trace`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from servescope.cli.local.process import LocalStackError, ManagedProcess, port_is_free

DEFAULT_GRAFANA_PORT = 3000
DEFAULT_JAEGER_UI_PORT = 16686
DEFAULT_OTLP_HTTP_PORT = 4318
DEFAULT_OTLP_GRPC_PORT = 4317
JAEGER_V1_ADMIN_PORT = 14269
JAEGER_V2_HEALTH_PORT = 13133
GRAFANA_BINARIES = ("grafana-server", "grafana")
JAEGER_BINARIES = ("jaeger-all-in-one", "jaeger")
GRAFANA_PROVISIONING = Path("deploy/local/grafana/provisioning")
DASHBOARDS_DIR = Path("dashboards")
# The URLs the committed provisioning names, rewritten for the ports of this run.
PROVISIONED_PROMETHEUS = "http://127.0.0.1:9090"
PROVISIONED_JAEGER = "http://127.0.0.1:16686"

GRAFANA_HINT = (
    "Grafana from https://grafana.com/grafana/download (meanwhile `servescope dashboards "
    "render` draws the dashboards from Prometheus)"
)
JAEGER_HINT = (
    "Jaeger all-in-one from https://www.jaegertracing.io/download/ (meanwhile "
    "`servescope trace --slowest 3` shows the waterfalls from the run's traces/)"
)


def find_binary(names: tuple[str, ...]) -> str | None:
    """The first of `names` on PATH, as a path."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_note(grafana: bool, jaeger: bool) -> str | None:
    """One line for whichever viewers were wanted and not found; None when none is missing."""
    hints = [hint for wanted, hint in ((grafana, GRAFANA_HINT), (jaeger, JAEGER_HINT)) if wanted]
    if not hints:
        return None
    what = " and ".join(n for n, w in (("Grafana", grafana), ("Jaeger", jaeger)) if w)
    verb, them = ("are", "them") if grafana and jaeger else ("is", "it")
    return (
        f"{what} {verb} not on PATH, so local mode runs without {them}; get "
        + " and ".join(hints)
        + f", and `servescope up` starts {them} next time."
    )


class JaegerProcess(ManagedProcess):
    """Jaeger all-in-one on 127.0.0.1, receiving OTLP, spans kept in memory."""

    def __init__(
        self,
        run_dir: Path,
        binary: str,
        ui_port: int = DEFAULT_JAEGER_UI_PORT,
        otlp_http_port: int = DEFAULT_OTLP_HTTP_PORT,
        otlp_grpc_port: int = DEFAULT_OTLP_GRPC_PORT,
        health_port: int | None = None,
    ) -> None:
        self.binary = binary
        self.v2 = Path(binary).name == "jaeger"
        default_health = JAEGER_V2_HEALTH_PORT if self.v2 else JAEGER_V1_ADMIN_PORT
        self.health_port = health_port or default_health
        # The health port is the one waited on; the UI's is what people open.
        super().__init__("jaeger", self.health_port, run_dir)
        self.ui_port = ui_port
        self.otlp_http_port = otlp_http_port
        self.otlp_grpc_port = otlp_grpc_port
        self.ready_path = "/status" if self.v2 else "/"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def otlp_endpoint(self) -> str:
        """What the services' OTEL_EXPORTER_OTLP_ENDPOINT is set to (OTLP over HTTP)."""
        return f"http://127.0.0.1:{self.otlp_http_port}"

    def ports(self) -> list[int]:
        return [self.health_port, self.ui_port, self.otlp_http_port, self.otlp_grpc_port]

    @property
    def config_path(self) -> Path:
        return self.run_dir / "jaeger.yaml"

    def config(self) -> dict[str, object]:
        """Jaeger 2.x's all-in-one configuration (cmd/jaeger/config.yaml), on loopback."""
        return {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": ["batch"],
                        "exporters": ["jaeger_storage_exporter"],
                    }
                },
            },
            "extensions": {
                "healthcheckv2": {
                    "use_v2": True,
                    "http": {"endpoint": f"127.0.0.1:{self.health_port}"},
                },
                "jaeger_query": {
                    "storage": {"traces": "memstore"},
                    "http": {"endpoint": f"127.0.0.1:{self.ui_port}"},
                    "grpc": {"endpoint": f"127.0.0.1:{self.ui_port - 1}"},
                },
                "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100000}}}},
            },
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": f"127.0.0.1:{self.otlp_grpc_port}"},
                        "http": {"endpoint": f"127.0.0.1:{self.otlp_http_port}"},
                    }
                }
            },
            "processors": {"batch": {}},
            "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
        }

    def prepare(self) -> None:
        if self.v2:
            self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def command(self) -> list[str]:
        if self.v2:
            return [self.binary, f"--config={self.config_path}"]
        return [
            self.binary,
            "--memory.max-traces=100000",
            "--collector.otlp.enabled=true",
            f"--collector.otlp.http.host-port=127.0.0.1:{self.otlp_http_port}",
            f"--collector.otlp.grpc.host-port=127.0.0.1:{self.otlp_grpc_port}",
            f"--query.http-server.host-port=127.0.0.1:{self.ui_port}",
            f"--query.grpc-server.host-port=127.0.0.1:{self.ui_port - 1}",
            f"--admin.http.host-port=127.0.0.1:{self.health_port}",
        ]

    def launch(self) -> None:
        busy = [p for p in self.ports() if p != self.port and not port_is_free(p)]
        if busy:
            raise LocalStackError(
                f"port {busy[0]} for jaeger is taken; stop what uses it "
                f"(`ss -ltnp 'sport = :{busy[0]}'` shows it)"
            )
        super().launch()


class GrafanaProcess(ManagedProcess):
    """Grafana with the repository's provisioning, state under the run directory."""

    ready_path = "/api/health"

    def __init__(
        self,
        run_dir: Path,
        binary: str,
        root: Path,
        port: int = DEFAULT_GRAFANA_PORT,
        prometheus_url: str = PROVISIONED_PROMETHEUS,
        jaeger_url: str = PROVISIONED_JAEGER,
    ) -> None:
        self.binary = binary
        self.root = root
        self.prometheus_url = prometheus_url
        self.jaeger_url = jaeger_url
        super().__init__("grafana", port, run_dir, env=None)

    @property
    def home(self) -> Path:
        return self.run_dir / "grafana"

    @property
    def provisioning(self) -> Path:
        return self.home / "provisioning"

    def homepath(self) -> Path | None:
        """Grafana's install folder (conf/defaults.ini, public/): next to the binary in a
        tarball, /usr/share/grafana from the Debian and RPM packages."""
        binary = Path(self.binary).resolve()
        for candidate in (
            binary.parent.parent,
            binary.parent.parent / "share" / "grafana",
            Path("/usr/share/grafana"),
        ):
            if (candidate / "conf" / "defaults.ini").is_file():
                return candidate
        return None

    def grafana_env(self) -> dict[str, str]:
        return {
            "GF_PATHS_PROVISIONING": str(self.provisioning),
            "GF_PATHS_DATA": str(self.home / "data"),
            "GF_PATHS_LOGS": str(self.home / "logs"),
            "GF_PATHS_PLUGINS": str(self.home / "plugins"),
            "GF_SERVER_HTTP_ADDR": "127.0.0.1",
            "GF_SERVER_HTTP_PORT": str(self.port),
            "GF_AUTH_ANONYMOUS_ENABLED": "true",
            "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
            "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
            "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES": "false",
            "GF_NEWS_NEWS_FEED_ENABLED": "false",
            # Read by the dashboard provider in the provisioning (`path: $SERVESCOPE_DASHBOARDS`).
            "SERVESCOPE_DASHBOARDS": str((self.root / DASHBOARDS_DIR).resolve()),
        }

    def prepare(self) -> None:
        source = self.root / GRAFANA_PROVISIONING
        if not source.is_dir():
            raise LocalStackError(f"no Grafana provisioning at {source}")
        if self.provisioning.exists():
            shutil.rmtree(self.provisioning)
        shutil.copytree(source, self.provisioning)
        for path in self.provisioning.rglob("*.yaml"):
            text = path.read_text()
            text = text.replace(PROVISIONED_PROMETHEUS, self.prometheus_url)
            text = text.replace(PROVISIONED_JAEGER, self.jaeger_url)
            path.write_text(text)
        for sub in ("data", "logs", "plugins"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **self.grafana_env()}

    def command(self) -> list[str]:
        home = self.homepath()
        args = [f"--homepath={home}"] if home else []
        if Path(self.binary).name == "grafana":
            return [self.binary, "server", *args]
        return [self.binary, *args]


@dataclass
class LocalViewers:
    """Jaeger (before the services, so they export to it) and Grafana (after Prometheus)."""

    run_dir: Path
    root: Path
    grafana_port: int | None = DEFAULT_GRAFANA_PORT  # None: no Grafana
    jaeger: bool = True
    jaeger_ui_port: int = DEFAULT_JAEGER_UI_PORT
    otlp_http_port: int = DEFAULT_OTLP_HTTP_PORT
    otlp_grpc_port: int = DEFAULT_OTLP_GRPC_PORT
    jaeger_health_port: int | None = None
    notes: list[str] = field(default_factory=list)
    jaeger_process: JaegerProcess | None = None
    grafana_process: GrafanaProcess | None = None

    def start_jaeger(self, timeout: float = 30.0) -> None:
        binary = find_binary(JAEGER_BINARIES) if self.jaeger else None
        if binary is None:
            return
        jaeger = JaegerProcess(
            self.run_dir,
            binary,
            ui_port=self.jaeger_ui_port,
            otlp_http_port=self.otlp_http_port,
            otlp_grpc_port=self.otlp_grpc_port,
            health_port=self.jaeger_health_port,
        )
        try:
            jaeger.start(timeout)
            self.jaeger_process = jaeger
        except LocalStackError as exc:
            self.notes.append(f"{exc}; continuing without Jaeger")

    def service_env(self) -> dict[str, str]:
        """What each service adds to export to Jaeger; empty when no Jaeger runs."""
        if self.jaeger_process is None:
            return {}
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.jaeger_process.otlp_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }

    def start_grafana(self, prometheus_url: str | None, timeout: float = 60.0) -> None:
        binary = find_binary(GRAFANA_BINARIES) if self.grafana_port is not None else None
        if binary is not None and self.grafana_port is not None:
            grafana = GrafanaProcess(
                self.run_dir,
                binary,
                self.root,
                port=self.grafana_port,
                prometheus_url=prometheus_url or PROVISIONED_PROMETHEUS,
                jaeger_url=f"http://127.0.0.1:{self.jaeger_ui_port}",
            )
            try:
                grafana.start(timeout)
                self.grafana_process = grafana
            except LocalStackError as exc:
                self.notes.append(f"{exc}; continuing without Grafana")
        note = missing_note(
            grafana=self.grafana_port is not None and binary is None,
            jaeger=self.jaeger and find_binary(JAEGER_BINARIES) is None,
        )
        if note:
            self.notes.append(note)

    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.jaeger_process, self.grafana_process) if p is not None]

    def summary(self) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        if self.grafana_process:
            rows.append(
                ("grafana", f"{self.grafana_process.url}  (dashboards in the Servescope folder)")
            )
        if self.jaeger_process:
            rows.append(
                (
                    "jaeger",
                    f"{self.jaeger_process.ui_url}  (OTLP in at {self.jaeger_process.otlp_endpoint})",
                )
            )
        return rows

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for process in (self.grafana_process, self.jaeger_process):
            if process is not None:
                codes[process.name] = process.stop()
        return codes
