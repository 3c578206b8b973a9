"""A lab's resource limits: `python -m servescope.cli.labs.kubelet`, run in the background.

`servescope up --limit` keeps its cgroups and the cAdvisor/kube-state-metrics exporter on
threads of its own foreground process (servescope.cli.local.containers). A lab returns to the
learner's shell, so the same pieces run here in a process of their own, recorded by PID like
every other lab process (as `kubelet`): it makes one cgroup per service
(servescope.cli.local.cgroups, the limits of lab.yaml's `limits` and the workspace's
`limits_file`), writes where they are to --state (JSON) for `lab start` to launch each
service inside its cgroup, serves /metrics/cadvisor and /metrics/kube-state-metrics on
--port (servescope.cli.local.exporter, scraped by the lab's Prometheus as jobs `kubelet` and
`kube-state-metrics`), and on SIGTERM stops serving and removes the cgroups. `lab stop` stops
the services first (they start after it), so the cgroups are empty by then.

Where the kernel gives no writable memory and cpu cgroups, --state says why
({"error": ...}) and the services run unlimited; the exporter then has no cAdvisor series.

It also restarts a service the kernel's OOM killer ended, as the kubelet restarts an
OOMKilled container (local mode's `Supervisor`, `oom_restarter`): with --services (a JSON file `lab start` writes: each
service's command, environment and log), a cgroup that empties while its `oom_kill` count
rose is a container terminated with reason `OOMKilled` (exit code 137). The service starts
again in the same cgroup after the kubelet's back-off, on a lab's compressed clock
(`LAB_BACKOFF`: the first restart at once, then 2 s, doubling, capped at 40 s; Kubernetes
and local mode: 10 s and 5 min),
with the dead process's `cache`-fault file removed first (tmpfs pages stay charged to the
cgroup until their file goes). Restarts and the last reason are published as
kube-state-metrics' `restarts_total` and `last_terminated_reason`, and each is one line in
the kubelet's log (.run/kubelet.log). Any other exit (`lab stop`, the `crash` fault) is not
restarted: its exit code is not this process's to read, and the lab's own commands stop and
restart services. A restarted service is this process's child, not in running.json: on
SIGTERM it is stopped here, before the cgroups and --scratch (the `cache` fault's tmpfs
directory, removed) go.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from servescope.cli.local.cgroups import Cgroup, CgroupV1, CgroupV2, Limits, detect, parse_limits
from servescope.cli.local.exporter import Container, Exporter
from servescope.cli.local.supervisor import BackOff, Supervisor
from servescope.telemetry.faultspec import cache_file_name

# A lab's kubelet back-off: local mode's (Kubernetes': a first restart at once, then 10 s
# doubling to 5 min), compressed so a crash loop shows within a drill's minutes (labs also
# scrape every second).
LAB_BACKOFF = BackOff(base=2.0, cap=40.0)


def describe(cgroup: Cgroup) -> dict[str, Any]:
    if isinstance(cgroup, CgroupV2):
        return {"version": 2, "path": str(cgroup.path)}
    assert isinstance(cgroup, CgroupV1)
    return {
        "version": 1,
        "memory": str(cgroup.memory),
        "cpu": str(cgroup.cpu),
        "cpuacct": str(cgroup.cpuacct),
    }


def from_description(name: str, limits: Limits, data: dict[str, Any]) -> Cgroup:
    """The Cgroup a service is launched into (only `wrap` is used: it already exists)."""
    if data["version"] == 2:
        return CgroupV2(name, limits, Path(data["path"]))
    return CgroupV1(name, limits, Path(data["memory"]), Path(data["cpu"]), Path(data["cpuacct"]))


class LabService:
    """A lab's service as the Supervisor sees a process: started by `lab start` inside its
    cgroup (not this process's child, so no exit code to read: `process` stands for it) until
    restarted here. It runs while its cgroup has processes."""

    def __init__(self, name: str, cgroup: Cgroup, spec: dict[str, Any]) -> None:
        self.name = name
        self.cgroup = cgroup
        self.spec = spec  # {command, env, log, port}
        self.port = int(spec["port"])
        self.process: subprocess.Popen[bytes] | _Started | None = None
        self.pids: list[int] = []  # last seen in the cgroup

    @property
    def log_path(self) -> Path:
        return Path(self.spec["log"])

    def running(self) -> bool:
        if isinstance(self.process, subprocess.Popen):
            self.process.poll()  # reap our own: a zombie has left the cgroup anyway
        pids = self.cgroup.pids()
        if pids:
            self.pids = pids
            if self.process is None:
                self.process = _Started()
        return bool(pids)

    def launch(self) -> None:
        """Start again inside the same cgroup, as this process's child."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.cgroup.wrap([str(part) for part in self.spec["command"]]),
                env=self.spec["env"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.pids = [self.process.pid]

    def remove_cache_files(self) -> None:
        """The dead process's `cache`-fault file: its tmpfs pages stay charged to the cgroup
        until the file goes."""
        env = self.spec.get("env") or {}
        folder = env.get("SERVESCOPE_FAULT_CACHE_DIR")
        if not folder:  # the runtime's default_cache_dir()
            shm = Path("/dev/shm")  # noqa: S108 - tmpfs on purpose
            usable = shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)
            folder = str(shm) if usable else tempfile.gettempdir()
        for pid in self.pids:
            (Path(folder) / cache_file_name(self.name, pid)).unlink(missing_ok=True)


def stop_children(services: Iterable[LabService], timeout: float = 5.0) -> None:
    """Stop, together, the services restarted here (`lab stop` stops the others)."""
    children = [s.process for s in services if isinstance(s.process, subprocess.Popen)]
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class _Started:
    """A service `lab start` launched: its exit code is not this process's to read."""

    returncode = None


def oom_restarter(
    cgroups: dict[str, Cgroup],
    services: dict[str, dict[str, Any]],
    say: Callable[[str], None] = print,
    policy: BackOff = LAB_BACKOFF,
) -> tuple[Supervisor, dict[str, LabService]]:
    """local mode's Supervisor over the services of --services that have a cgroup,
    restarting only those the OOM killer ended."""
    watched = {
        name: LabService(name, cgroup, services[name])
        for name, cgroup in cgroups.items()
        if name in services
    }
    supervisor = Supervisor(
        watched,
        say=say,
        poll=0.2,
        policy=policy,
        restart_on=("OOMKilled",),
        on_end=lambda name: watched[name].remove_cache_files(),
    )
    return supervisor, watched


def _write(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m servescope.cli.labs.kubelet")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--service", action="append", default=[], help="every service")
    parser.add_argument("--limit", action="append", default=[], help="SERVICE=memory:Q,cpu:Q")
    parser.add_argument("--services", type=Path, help="JSON: what to restart after an OOM kill")
    parser.add_argument("--scratch", type=Path, help="the cache fault's tmpfs dir, removed at exit")
    args = parser.parse_args(argv)
    limits: dict[str, Limits] = {}
    for spec in args.limit:
        name, _, text = spec.partition("=")
        limits[name] = parse_limits(text)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    cgroups: dict[str, Cgroup] = {}
    driver, how = detect(None)
    state: dict[str, Any] = {"pid": os.getpid(), "cgroups": {}}
    if driver is None:
        state["error"] = f"resource limits need writable memory and cpu cgroups ({how})"
    else:
        driver.remove_stale()  # left by a lab that was killed, never cleaned up
        try:
            for name in args.service:
                cgroups[name] = driver.new(name, limits.get(name, Limits()))
        except OSError as exc:
            state["error"] = f"resource limits need writable cgroups ({exc})"
            for cgroup in cgroups.values():
                with contextlib.suppress(OSError):
                    cgroup.remove()
            cgroups = {}
    state["cgroups"] = {name: describe(c) for name, c in cgroups.items()}
    containers = [
        Container(
            name, limits.get(name, Limits()) if name in cgroups else Limits(), cgroups.get(name)
        )
        for name in args.service
    ]
    services = json.loads(args.services.read_text()) if args.services else {}
    restarter, watched = oom_restarter(cgroups, services, say=lambda line: print(line, flush=True))
    exporter = Exporter(containers, restarter.snapshot, args.port)
    try:
        exporter.start()
    except OSError as exc:
        state["error"] = f"the exporter cannot listen on 127.0.0.1:{args.port} ({exc})"
        _write(args.state, state)
        for cgroup in cgroups.values():
            with contextlib.suppress(OSError):
                cgroup.remove()
        if args.scratch:
            shutil.rmtree(args.scratch, ignore_errors=True)
        return 1
    _write(args.state, state)
    print(
        f"kubelet: cgroups {', '.join(cgroups) or 'none'}; exporter on {exporter.url}", flush=True
    )
    restarter.start()
    try:
        while not stopping.wait(0.2):
            pass
    finally:
        restarter.stop()
        exporter.stop()
        stop_children(watched.values())
        for name, cgroup in cgroups.items():
            try:
                cgroup.remove()
            except OSError as exc:
                print(f"kubelet: could not remove the cgroup of {name}: {exc}", file=sys.stderr)
        if args.scratch:
            shutil.rmtree(args.scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
