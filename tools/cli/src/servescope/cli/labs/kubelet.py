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
OOMKilled container (`OomRestarter`): with --services (a JSON file `lab start` writes: each
service's command, environment and log), a cgroup that empties while its `oom_kill` count
rose is a container terminated with reason `OOMKilled` (exit code 137). The service starts
again in the same cgroup after the kubelet's back-off, on a lab's compressed clock (the
first restart at once, then 2 s, doubling, capped at 40 s; Kubernetes: 10 s and 5 min),
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from servescope.cli.local.cgroups import Cgroup, CgroupV1, CgroupV2, Limits, detect, parse_limits
from servescope.cli.local.exporter import Container, Exporter
from servescope.cli.local.process import port_is_free
from servescope.cli.local.supervisor import ContainerStatus
from servescope.telemetry.faultspec import cache_file_name

# A lab's kubelet back-off: Kubernetes' doubling from 10 s capped at 5 min (after a first
# restart at once), compressed so a crash loop shows within a drill's minutes (labs also
# scrape every second).
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 40.0


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


class OomRestarter:
    """Restarts, after the back-off, each service whose cgroup emptied by an OOM kill."""

    def __init__(
        self,
        cgroups: dict[str, Cgroup],
        services: dict[str, dict[str, Any]],
        say: Callable[[str], None] = print,
    ) -> None:
        self.cgroups = {n: c for n, c in cgroups.items() if n in services}
        self.services = services  # name -> {command, env, log, port}
        self.say = say
        self.status = {name: ContainerStatus(name) for name in cgroups}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._pids: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        for name, cgroup in self.cgroups.items():
            self.status[name].oom_kills_seen = cgroup.usage().oom_kills

    def backoff(self, failures: int) -> float:
        """The wait before restart number `failures` (1-based). As the kubelet's doBackOff
        does, the first restart is at once (no back-off entry yet), then base, 2 x base..."""
        if failures <= 1:
            return 0.0
        return float(min(BACKOFF_BASE_SECONDS * 2 ** (failures - 2), BACKOFF_MAX_SECONDS))

    def check(self) -> None:
        now = time.monotonic()
        for name, cgroup in self.cgroups.items():
            status = self.status[name]
            child = self.children.get(name)
            if child is not None:
                child.poll()  # reap our own: a zombie has left the cgroup anyway
            if status.restart_at is not None:
                if now >= status.restart_at:
                    self._restart(name, cgroup)
                continue
            pids = cgroup.pids()
            if pids:
                self._pids[name] = pids
                continue
            dead = self._pids.pop(name, [])
            if not dead:
                continue
            oom_kills = cgroup.usage().oom_kills
            if oom_kills <= status.oom_kills_seen:
                continue  # stopped by the lab, or exited by itself: not restarted here
            with self._lock:
                status.oom_kills_seen = oom_kills
                status.last_reason = "OOMKilled"
                status.last_exit_code = 137
                status.last_finished_at = time.time()
                status.failures += 1
                wait = self.backoff(status.failures)
                status.restart_at = now + wait
            self._remove_cache_files(name, dead)
            self.say(
                f"{name} terminated: OOMKilled (exit code 137); restarting in {wait:g} s "
                f"(restart {status.restarts + 1}, see {self.services[name]['log']})"
            )

    def _remove_cache_files(self, name: str, pids: list[int]) -> None:
        env = self.services[name].get("env") or {}
        folder = env.get("SERVESCOPE_FAULT_CACHE_DIR")
        if not folder:  # the runtime's default_cache_dir()
            shm = Path("/dev/shm")  # noqa: S108 - tmpfs on purpose
            usable = shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)
            folder = str(shm) if usable else tempfile.gettempdir()
        for pid in pids:
            (Path(folder) / cache_file_name(name, pid)).unlink(missing_ok=True)

    def _restart(self, name: str, cgroup: Cgroup) -> None:
        status = self.status[name]
        spec = self.services[name]
        if not port_is_free(int(spec["port"])):
            with self._lock:
                status.restart_at = time.monotonic() + 1.0  # its last requests still closing
            return
        with Path(spec["log"]).open("ab") as log:
            self.children[name] = subprocess.Popen(
                cgroup.wrap([str(part) for part in spec["command"]]),
                env=spec["env"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        with self._lock:
            status.restarts += 1
            status.restart_at = None
            status.started_at = time.time()
        self._pids[name] = [self.children[name].pid]

    def snapshot(self) -> dict[str, ContainerStatus]:
        with self._lock:
            return {name: ContainerStatus(**vars(s)) for name, s in self.status.items()}

    def stop_children(self, timeout: float = 5.0) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + timeout
        for child in self.children.values():
            try:
                child.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


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
    restarter = OomRestarter(cgroups, services, say=lambda line: print(line, flush=True))
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
    try:
        while not stopping.wait(0.2):
            with contextlib.suppress(Exception):
                restarter.check()
    finally:
        exporter.stop()
        restarter.stop_children()
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
