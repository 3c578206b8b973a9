"""A lab's processes: the local stack started in the background, recorded by PID, and
stopped by PID from a later command.

`servescope up` runs in the foreground and stops everything on Ctrl-C. A lab instead starts
the same pieces (servescope.cli.local: LocalStack, PrometheusProcess, LocalAlerting) and
returns, so the learner keeps the terminal; every PID goes to `.run/labs/running.json` with
the process's start time, so `lab stop` (or `reset`) never signals a recycled PID.
Logs, traces and the admin token go where `servescope up` puts them (`.run/<service>.log`,
`.run/traces/`, `.run/admin-token`), so `servescope trace`, `servescope fault` and the
commands in the docs work unchanged while a lab runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from servescope.cli.labs.model import Lab, LabError
from servescope.cli.labs.store import Store
from servescope.cli.labs.workspace import read_env_file
from servescope.cli.local.alerting import (
    DEFAULT_ALERTMANAGER_PORT,
    DEFAULT_RESPONDER_PORT,
    LocalAlerting,
)
from servescope.cli.local.process import port_is_free
from servescope.cli.local.services import (
    DEFAULT_PORTS,
    SERVICES,
    LocalStack,
    LocalStackError,
    PrometheusProcess,
    prometheus_config,
)
from servescope.cli.paths import heldout_dir
from servescope.telemetry.pipeline import PIPELINE

DEFAULT_PROMETHEUS_PORT = 9090
DEFAULT_EXPORTER_PORT = 9096  # as `servescope up` (servescope.cli.local.session)
PORT_BASE_ENV = "SERVESCOPE_LAB_PORT_BASE"
SCRAPE_INTERVAL = "1s"  # labs want an answer within seconds of a change
# Probe, scrape and admin routes: not traffic (declared with the pipeline's facts).
NOT_TRAFFIC = PIPELINE.probe_regex


@dataclass(frozen=True)
class Ports:
    preprocess: int
    classifier: int
    postprocess: int
    prometheus: int
    alertmanager: int
    responder: int
    # The cAdvisor/kube-state-metrics exporter of a lab with `limits` (the next port up).
    exporter: int = DEFAULT_EXPORTER_PORT

    @classmethod
    def default(cls) -> Ports:
        return cls(
            preprocess=DEFAULT_PORTS["preprocess"],
            classifier=DEFAULT_PORTS["classifier"],
            postprocess=DEFAULT_PORTS["postprocess"],
            prometheus=DEFAULT_PROMETHEUS_PORT,
            alertmanager=DEFAULT_ALERTMANAGER_PORT,
            responder=DEFAULT_RESPONDER_PORT,
            exporter=DEFAULT_EXPORTER_PORT,
        )

    @classmethod
    def from_base(cls, base: int) -> Ports:
        """Six consecutive ports: the three services, Prometheus, Alertmanager, responder
        (and a seventh, the exporter, for a lab with `limits`)."""
        if not 1024 <= base <= 65535 - 6:
            raise LabError(f"--port-base {base}: choose a base between 1024 and 65529")
        return cls(base, base + 1, base + 2, base + 3, base + 4, base + 5, base + 6)

    @classmethod
    def choose(cls, base: int | None = None) -> Ports:
        """--port-base, else $SERVESCOPE_LAB_PORT_BASE, else the defaults `up` uses."""
        if base is None and os.environ.get(PORT_BASE_ENV):
            try:
                base = int(os.environ[PORT_BASE_ENV])
            except ValueError:
                raise LabError(f"{PORT_BASE_ENV} must be a port number") from None
        return cls.from_base(base) if base is not None else cls.default()

    @property
    def services(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in SERVICES}

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def port_in_use(port: int) -> bool:
    return not port_is_free(port)


# --- processes by PID --------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a recycled PID."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (tests run in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int, started: str | None = None) -> bool:
    _reap(pid)
    if Path("/proc").is_dir() and Path("/proc/self/stat").exists():
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return started is None or start_time(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_pid(pid: int, started: str | None, timeout: float = 10.0) -> bool:
    """SIGTERM the process we recorded, wait, SIGKILL if it overstays. True if it was ours
    and running."""
    if not pid_alive(pid, started):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid, started):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while pid_alive(pid, started) and time.monotonic() < deadline:
                time.sleep(0.05)
            break
        time.sleep(0.05)
    return True


def process_entry(name: str, pid: int | None, log: Path | None) -> dict[str, Any]:
    if pid is None:
        raise LabError(f"{name} did not start")
    return {"name": name, "pid": pid, "start_time": start_time(pid), "log": str(log or "")}


def alive_processes(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in record.get("processes", []) if pid_alive(int(p["pid"]), p.get("start_time"))]


def stop_processes(
    store: Store, record: dict[str, Any], keep: Callable[[str], bool] = lambda _: False
) -> list[str]:
    """Stop the recorded processes (the last started first) except those `keep` names;
    the record loses the stopped ones. Returns the names stopped."""
    stopped: list[str] = []
    kept: list[dict[str, Any]] = []
    for entry in reversed(record.get("processes", [])):
        if keep(entry["name"]):
            kept.insert(0, entry)
            continue
        if stop_pid(int(entry["pid"]), entry.get("start_time")):
            stopped.append(entry["name"])
    record["processes"] = kept
    if kept:
        store.set_running(record)
    else:
        store.clear_running()
    return stopped


def _scratch_dir(tag: int) -> Path | None:
    """A fresh directory on the shared-memory tmpfs for a lab's `cache` fault (None where
    there is no writable /dev/shm: the runtime then uses the temp dir)."""
    import tempfile

    shm = Path("/dev/shm")  # noqa: S108 - tmpfs on purpose
    if not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
        return None
    return Path(tempfile.mkdtemp(prefix=f"servescope-lab-{tag}-", dir=shm))


# --- HTTP ---------------------------------------------------------------------------------


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answers. Labs talk to their own processes on
    the loopback interface only."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise LabError(f"labs only call their own processes on 127.0.0.1, not {url}")
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def admin(url: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """A call to a service's /admin API with the lab's bearer token; (status, JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    status, raw = http(
        method,
        url + path,
        data,
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def prometheus_query(url: str, expr: str, at: float | None = None) -> dict[str, Any]:
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    status, raw = http("GET", f"{url}/api/v1/query?{urllib.parse.urlencode(params)}")
    try:
        answer: dict[str, Any] = json.loads(raw)
    except ValueError:
        answer = {"status": "error", "error": f"HTTP {status} from Prometheus at {url}"}
    return answer


# --- bringing a lab up --------------------------------------------------------------------


def python_path(root: Path) -> str:
    """PYTHONPATH that makes processes import the workspace members of `root` first, so a
    lab run against another checkout (`--root`, the tests' copies) runs that copy's code."""
    sources = [
        *sorted(root.glob("services/*/src")),
        root / "dashboards/src",
        root / "tools/cli/src",
    ]
    paths = [str(p) for p in sources if p.is_dir()]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(paths)


@dataclass
class LabStack:
    """Everything one lab runs, started in dependency order and recorded as it goes."""

    lab: Lab
    root: Path
    store: Store
    ports: Ports
    _stack: LocalStack = field(init=False, repr=False)
    _prometheus: PrometheusProcess | None = field(default=None, init=False, repr=False)
    notes: list[str] = field(default_factory=list, init=False, repr=False)  # for `start` to print

    @property
    def run_dir(self) -> Path:
        return self.store.run_dir

    @property
    def token_file(self) -> Path:
        return self.run_dir / "admin-token"

    @property
    def trace_dir(self) -> Path:
        return self.run_dir / "traces"

    def urls(self) -> dict[str, str]:
        urls: dict[str, str] = {}
        if self.lab.needs_services:
            urls.update({n: f"http://127.0.0.1:{p}" for n, p in self.ports.services.items()})
        if self.lab.needs_prometheus:
            urls["prometheus"] = f"http://127.0.0.1:{self.ports.prometheus}"
        if "alertmanager" in self.lab.needs:
            urls["alertmanager"] = f"http://127.0.0.1:{self.ports.alertmanager}"
            urls["responder"] = f"http://127.0.0.1:{self.ports.responder}"
        if self.lab.has_limits:
            urls["kubelet"] = f"http://127.0.0.1:{self.ports.exporter}"
        return urls

    def new_record(self) -> dict[str, Any]:
        return {
            "lab": self.lab.id,
            "root": str(self.root),
            "started_at": time.time(),
            "ports": self.ports.as_dict(),
            "urls": self.urls(),
            "run_dir": str(self.run_dir),
            "trace_dir": str(self.trace_dir),
            "log_dir": str(self.run_dir),
            "processes": [],
        }

    def _add(self, record: dict[str, Any], name: str, pid: int | None, log: Path | None) -> None:
        """Record a process we started, with its start time; one already gone is not
        recorded (its PID may belong to someone else by the time anyone stops it)."""
        if pid is None or not pid_alive(pid):
            return
        record["processes"].append(process_entry(name, pid, log))
        self.store.set_running(record)

    def check_ports(self, names: list[str]) -> None:
        ports = self.ports.as_dict()
        busy = [f"{ports[n]} ({n})" for n in names if port_in_use(ports[n])]
        if busy:
            raise LabError(
                f"port {', '.join(busy)} already in use. Is `servescope up` running? Stop it "
                "(Ctrl-C in its terminal): a lab runs the same processes in the background. "
                f"`ss -ltnp 'sport = :{busy[0].split()[0]}'` shows what holds it; or run the lab "
                "on other ports: `servescope lab start ID --port-base 18000`."
            )

    def _lab_env(self, service: str) -> dict[str, str]:
        """lab.yaml's env for one service, with {lab} (the lab's folder) and {root} (the
        repository) replaced by their paths."""
        return {
            key: value.replace("{lab}", str(self.lab.path)).replace("{root}", str(self.root))
            for key, value in self.lab.env.get(service, {}).items()
        }

    def service_env(self) -> dict[str, dict[str, str]]:
        if not self.token_file.exists():
            self.token_file.parent.mkdir(parents=True, exist_ok=True)
            self.token_file.write_text(secrets.token_urlsafe(24))
            self.token_file.chmod(0o600)
        common = {
            "SERVESCOPE_ADMIN_TOKEN": self.token_file.read_text().strip(),
            "SERVESCOPE_TRACE_SAMPLE_RATIO": "1.0",
            "SERVESCOPE_LOG_INFO_SAMPLE_RATIO": "1.0",
            # Spans reach the trace files within half a second, not the SDK's 5 s.
            "OTEL_BSP_SCHEDULE_DELAY": "500",
            "PYTHONPATH": python_path(self.root),
        }
        env: dict[str, dict[str, str]] = {"*": {**common, **self._lab_env("*")}}
        for name in SERVICES:
            env[name] = {
                "SERVESCOPE_TRACE_FILE": str(self.trace_dir / f"{name}.jsonl"),
                **self._lab_env(name),
            }
            env_file = self.lab.env_files.get(name)
            if env_file:
                path = self.lab.workspace / env_file
                try:
                    env[name].update(read_env_file(path))
                except OSError as exc:
                    raise LabError(f"cannot read {path} ({exc})") from exc
                except ValueError as exc:
                    raise LabError(str(exc)) from exc
        return env

    def limits(self) -> dict[str, str]:
        """lab.yaml's limits with the workspace's limits_file over them."""
        limits = dict(self.lab.limits)
        if self.lab.limits_file:
            path = self.lab.workspace / self.lab.limits_file
            try:
                found = read_env_file(path)
            except OSError as exc:
                raise LabError(f"cannot read {path} ({exc})") from exc
            except ValueError as exc:
                raise LabError(str(exc)) from exc
            from servescope.cli.local.cgroups import parse_limits

            for service, spec in found.items():
                if service not in SERVICES:
                    raise LabError(f"{path}: no service {service!r} ({', '.join(SERVICES)})")
                try:
                    parse_limits(spec)
                except ValueError as exc:
                    raise LabError(f"{path}: {service}: {exc}") from None
                limits[service] = spec
        return limits

    def launch_kubelet(self, record: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        """The cgroups and the exporter of a lab with limits (servescope.cli.labs.kubelet),
        started before the services, which launch inside its cgroups. Returns its state.

        It restarts a service the OOM killer ended: it gets each service's command,
        environment and log (kubelet-services.json, private) and a tmpfs directory for the
        `cache` fault (SERVESCOPE_FAULT_CACHE_DIR), which it removes when it stops."""
        self.check_ports(["exporter"])
        limits = self.limits()
        state_path = self.store.labs_dir / "kubelet.json"
        state_path.unlink(missing_ok=True)
        scratch = _scratch_dir(self.ports.exporter)
        services: dict[str, Any] = {}
        for name, service in self._stack.services.items():
            if scratch is not None and service.env is not None:
                service.env["SERVESCOPE_FAULT_CACHE_DIR"] = str(scratch)
            services[name] = {
                "command": service.command(),
                "env": service.env,
                "log": str(service.log_path),
                "port": service.port,
            }
        services_path = self.store.labs_dir / "kubelet-services.json"
        services_path.parent.mkdir(parents=True, exist_ok=True)
        services_path.touch(mode=0o600)
        services_path.chmod(0o600)  # the admin token is in the environment
        services_path.write_text(json.dumps(services))
        command = [
            sys.executable,
            "-m",
            "servescope.cli.labs.kubelet",
            f"--port={self.ports.exporter}",
            f"--state={state_path}",
            *[f"--service={name}" for name in SERVICES],
            *[f"--limit={name}={spec}" for name, spec in limits.items()],
            f"--services={services_path}",
            *([f"--scratch={scratch}"] if scratch is not None else []),
        ]
        log_path = self.run_dir / "kubelet.log"
        env = {**os.environ, "PYTHONPATH": python_path(self.root)}
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not state_path.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                if scratch is not None and process.poll() is not None:
                    shutil.rmtree(scratch, ignore_errors=True)
                raise LabError(f"the lab's cgroups and exporter did not start; see {log_path}")
            time.sleep(0.05)
        self._add(record, "kubelet", process.pid, log_path)
        state: dict[str, Any] = json.loads(state_path.read_text())
        state["limits"] = limits
        return state

    def launch_services(self, record: dict[str, Any]) -> None:
        """Launch the three services (without waiting: see wait_services)."""
        self.check_ports(list(SERVICES))
        # Fresh logs and traces each start, so what a learner reads is this run's story.
        for old in [*self.run_dir.glob("*.log"), *self.trace_dir.glob("*.jsonl")]:
            if old.stem in (*SERVICES, "loadgen") or old.parent == self.trace_dir:
                old.unlink()
        self._stack = LocalStack(
            ports=self.ports.services, run_dir=self.run_dir, env=self.service_env()
        )
        kubelet = self.launch_kubelet(record) if self.lab.has_limits else None
        self.notes = []
        if kubelet is not None:
            from servescope.cli.labs.kubelet import from_description
            from servescope.cli.local.cgroups import Limits, parse_limits

            if kubelet.get("error"):
                self.notes.append(f"{kubelet['error']}; running without limits")
            for name, where in kubelet.get("cgroups", {}).items():
                spec = kubelet["limits"].get(name)
                limits = parse_limits(spec) if spec else Limits()
                self._stack.services[name].cgroup = from_description(name, limits, where)
            limited = [f"{n} {parse_limits(s).describe()}" for n, s in kubelet["limits"].items()]
            if limited and not kubelet.get("error"):
                self.notes.append("limits: " + "; ".join(limited))
        for name in SERVICES:
            service = self._stack.services[name]
            try:
                service.launch()
            except LocalStackError as exc:
                raise LabError(str(exc)) from exc
            self._add(record, name, service.pid, service.log_path)

    def wait_services(self, timeout: float = 60.0) -> list[str]:
        """Until each service is alive and (unless the lab's broken state is being unready)
        ready. Returns notes to print."""
        stack = self._stack
        deadline = time.monotonic() + timeout

        def died(name: str) -> LabError:
            service = stack.services[name]
            return LabError(
                f"{name} exited during start; last lines of {service.log_path}:\n"
                f"{service.log_tail()}"
            )

        for name in SERVICES:
            service = stack.services[name]
            while http("GET", service.url + "/healthz", timeout=0.5)[0] != 200:
                if not service.running():
                    raise died(name)
                if time.monotonic() > deadline:
                    raise LabError(
                        f"{name} not alive after {timeout:.0f} s; see {service.log_path}"
                    )
                time.sleep(0.05)
        notes = list(self.notes)
        for name in SERVICES:
            service = stack.services[name]
            lenient = name in self.lab.allow_unready
            wait_until = time.monotonic() + 2 if lenient else deadline
            status, body = http("GET", service.url + "/readyz", timeout=0.5)
            while status != 200 and time.monotonic() < wait_until:
                if not service.running():
                    raise died(name)
                time.sleep(0.1)
                status, body = http("GET", service.url + "/readyz", timeout=0.5)
            if status == 200:
                continue
            if not lenient:
                raise LabError(f"{name} not ready after {timeout:.0f} s; see {service.log_path}")
            try:
                waiting = ", ".join(json.loads(body).get("waiting_for", []))
            except (ValueError, AttributeError):
                waiting = ""
            notes.append(
                f"{name} is alive but not ready (/readyz answers {status}"
                + (f", waiting for {waiting})" if waiting else ")")
            )
        return notes

    def launch_observability(self, record: dict[str, Any], timeout: float = 30.0) -> None:
        """Alertmanager and the responder it notifies (started and waited for, so Prometheus
        finds them), then Prometheus (launched: see wait_observability)."""
        if not PrometheusProcess.available():
            raise LabError(
                "this lab needs Prometheus, which is not installed. On Debian or Ubuntu: "
                "sudo apt-get install prometheus"
            )
        alerting_port = None
        running = {entry["name"] for entry in record["processes"]}
        if "alertmanager" in self.lab.needs and "alertmanager" in running:
            alerting_port = self.ports.alertmanager  # kept across a restart
        elif "alertmanager" in self.lab.needs:
            self.check_ports(["alertmanager", "responder"])
            alerting = LocalAlerting(
                self.store.alerting_dir,
                prometheus_url=f"http://127.0.0.1:{self.ports.prometheus}",
                alertmanager_port=self.ports.alertmanager,
                responder_port=self.ports.responder,
                fast=True,
            )
            try:
                alerting.start(timeout)
            except LocalStackError as exc:
                raise LabError(str(exc)) from exc
            finally:
                for process in alerting.processes():
                    if process.pid is not None:
                        self._add(record, process.name, process.pid, process.log_path)
            alerting_port = self.ports.alertmanager
        self.check_ports(["prometheus"])
        config = prometheus_config(
            self.ports.services,
            self.ports.prometheus,
            scrape_interval=SCRAPE_INTERVAL,
            alertmanager_port=alerting_port,
            exporter_port=self.ports.exporter if self.lab.has_limits else None,
        )
        if alerting_port is None:
            config.pop("alerting", None)
        shutil.rmtree(self.store.prometheus_dir / "prometheus-data", ignore_errors=True)
        self._prometheus = PrometheusProcess(
            self.ports.prometheus, self.store.prometheus_dir, config
        )
        try:
            self._prometheus.launch()
        except LocalStackError as exc:
            raise LabError(str(exc)) from exc
        self._add(record, "prometheus", self._prometheus.pid, self._prometheus.log_path)

    def wait_observability(self, timeout: float = 30.0) -> None:
        """Until Prometheus is ready and has scraped every target once."""
        if self._prometheus is None:
            return
        try:
            self._prometheus.wait_ready(timeout)
            self._prometheus.wait_for_targets(timeout)
        except LocalStackError as exc:
            raise LabError(str(exc)) from exc

    def apply_faults(self, faults: tuple[str, ...]) -> None:
        token = self.token_file.read_text().strip()
        from servescope.cli.local.session import parse_fault  # the grammar of `up --fault`

        for fault in faults:
            # SERVICE:KIND[:STEP][:VALUE], or the older SERVICE:STEP:SECONDS (a delay).
            service, spec = parse_fault(fault)
            status, body = admin(
                self.urls()[service], token, "PUT", "/admin/faults", {"spec": spec}
            )  # fmt: skip
            if status != 200:
                raise LabError(f"fault {fault}: {service} answered {status} {body}")

    def start_traffic(self, record: dict[str, Any]) -> None:
        traffic = self.lab.traffic
        if traffic is None:
            return
        urls = self.urls()
        command = [
            sys.executable,
            "-m",
            "servescope.cli.labs.driver",
            f"--url={urls['preprocess']}",
            f"--rate={traffic.rate:g}",
            f"--mix={traffic.mix}",
            f"--heldout-dir={heldout_dir()}",
            f"--token-file={self.token_file}",
        ]
        if traffic.probes:
            command += [f"--probe={urls[name]}" for name in SERVICES]
        for pulse in traffic.pulses:
            command.append(
                f"--pulse={urls[pulse.service]}|{pulse.step}|{pulse.delay:g}|"
                f"{pulse.every:g}|{pulse.for_seconds:g}"
            )
        log_path = self.run_dir / "loadgen.log"
        env = {**os.environ, "PYTHONPATH": python_path(self.root)}
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # not in the terminal's process group: Ctrl-C is the learner's
            )
        self._add(record, "traffic", process.pid, log_path)

    def wait_for_data(self, timeout: float = 30.0) -> None:
        """Until Prometheus has a request rate for the edge, so the first query answers."""
        traffic = self.lab.traffic
        if traffic is None or not self.lab.needs_prometheus:
            return
        url = self.urls()["prometheus"]
        expr = (
            "sum(rate(http_server_request_duration_seconds_count"
            f'{{job="preprocess", http_route!~"{NOT_TRAFFIC}"}}[1m]))'
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = prometheus_query(url, expr).get("data", {}).get("result", [])
            if result and float(result[0]["value"][1]) > 0:
                time.sleep(traffic.warmup)
                return
            time.sleep(0.25)
        raise LabError(
            f"no traffic reached Prometheus within {timeout:.0f} s; see {self.run_dir}/loadgen.log"
        )
