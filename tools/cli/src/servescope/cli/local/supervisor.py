"""A small kubelet for local mode: restart what dies, with back-off, and say why it died.

The kubelet restarts a failed container with an exponential back-off (`BackOff`: the first
restart at once, as its doBackOff has no entry for the container yet, then 10 s, doubling,
capped at 5 minutes: `initialBackOff`/`MaxContainerBackOff` in pkg/kubelet, forgotten after
10 minutes of running) and records the last termination's reason: `OOMKilled` when the kernel's OOM killer ended it (the runtime reads the
cgroup's OOM events), `Error` with the exit code for any other failure, `Completed` for exit 0.
kube-state-metrics then publishes `kube_pod_container_status_restarts_total` and
`kube_pod_container_status_last_terminated_reason{reason}`; `exporter.py` does the same from
the `ContainerStatus` kept here. `servescope up` supervises its `ManagedProcess`es with it
(`local/containers.py`) and a lab's kubelet the services in its cgroups (`servescope.cli.labs.kubelet`), with
the same `BackOff` on a compressed clock and `restart_on` limited to `OOMKilled`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from servescope.cli.local.process import port_is_free

BACKOFF_BASE_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 300.0
# The kubelet forgets a container's back-off once it has run this long without failing.
BACKOFF_RESET_SECONDS = 600.0
REASONS = ("OOMKilled", "Error", "Completed")  # restartPolicy Always restarts after each


@dataclass(frozen=True)
class BackOff:
    """The kubelet's restart back-off: the first restart at once, then base, 2 x base, ...
    capped; a container that has run `reset_after` seconds starts again from the first."""

    base: float = BACKOFF_BASE_SECONDS
    cap: float = BACKOFF_MAX_SECONDS
    reset_after: float = BACKOFF_RESET_SECONDS
    first_at_once: bool = True

    def wait(self, failures: int) -> float:
        """The wait before restart number `failures` (1-based)."""
        if self.first_at_once:
            if failures <= 1:
                return 0.0
            failures -= 1
        return float(min(self.base * 2 ** max(failures - 1, 0), self.cap))


class Supervised(Protocol):
    """What the supervisor needs of a process (a `ManagedProcess`, or a lab's service)."""

    port: int
    cgroup: Any  # servescope.cli.local.cgroups.Cgroup, or None

    @property
    def log_path(self) -> Path: ...

    @property
    def process(self) -> Any: ...  # the subprocess.Popen started last, or None

    def running(self) -> bool: ...

    def launch(self) -> None: ...


@dataclass
class ContainerStatus:
    name: str
    restarts: int = 0
    last_reason: str | None = None  # OOMKilled, Error or Completed
    last_exit_code: int | None = None
    last_finished_at: float | None = None
    started_at: float = field(default_factory=time.time)
    restart_at: float | None = None  # monotonic time of the next start, while backing off
    failures: int = 0  # consecutive, for the back-off
    oom_kills_seen: int = 0


def exit_code_of(returncode: int | None) -> int:
    """Popen's returncode as a container runtime reports it: -9 (SIGKILL) is 137."""
    if returncode is None:
        return 0
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    """Watches processes on a thread; restarts each that ends, after kubelet's back-off.

    `policy` is the back-off (`backoff_base`, `backoff_max` and `reset_after` override its
    fields); `restart_on` the termination reasons restarted: an ending with another reason is
    neither recorded nor restarted (a lab's kubelet restarts only `OOMKilled`); `on_end`, if
    given, is called with the name of each process about to be restarted, before the back-off.
    """

    def __init__(
        self,
        processes: Mapping[str, Supervised],
        backoff_base: float | None = None,
        backoff_max: float | None = None,
        reset_after: float | None = None,
        say: Callable[[str], None] = print,
        poll: float = 0.1,
        policy: BackOff = BackOff(),
        restart_on: Collection[str] = REASONS,
        on_end: Callable[[str], None] | None = None,
    ) -> None:
        self.processes = dict(processes)
        self.policy = BackOff(
            policy.base if backoff_base is None else backoff_base,
            policy.cap if backoff_max is None else backoff_max,
            policy.reset_after if reset_after is None else reset_after,
            policy.first_at_once,
        )
        self.restart_on = frozenset(restart_on)
        self.on_end = on_end
        self.say = say
        self.poll = poll
        self.status = {name: ContainerStatus(name) for name in processes}
        self.events: list[tuple[str, str, int]] = []  # (name, reason, exit code)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running_since = {name: time.monotonic() for name in processes}
        self._ignored: dict[str, Any] = {}  # name -> the ended Popen not restarted
        for name, process in processes.items():
            if process.cgroup is not None:
                self.status[name].oom_kills_seen = process.cgroup.usage().oom_kills

    @property
    def backoff_base(self) -> float:
        return self.policy.base

    @property
    def reset_after(self) -> float:
        return self.policy.reset_after

    def backoff(self, failures: int) -> float:
        """The wait before restart number `failures` (1-based): see `BackOff.wait`."""
        return self.policy.wait(failures)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop restarting (the caller then stops the processes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def supervises(self, process: Supervised) -> bool:
        return any(p is process for p in self.processes.values())

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            with contextlib.suppress(Exception):
                self.check()

    def check(self) -> None:
        """One round: record what has ended, start what has waited long enough."""
        now = time.monotonic()
        for name, process in self.processes.items():
            status = self.status[name]
            if status.restart_at is not None:
                if now >= status.restart_at and not self._stop.is_set():
                    self._restart(name, process)
                continue
            if process.running() or process.process is None:  # running, or never started
                self._ignored.pop(name, None)
                if now - self._running_since[name] > self.reset_after:
                    status.failures = 0
                continue
            if self._ignored.get(name) is not process.process:
                self._record(name, process, now)

    def _record(self, name: str, process: Supervised, now: float) -> None:
        status = self.status[name]
        returncode = process.process.returncode if process.process is not None else None
        code = exit_code_of(returncode)
        oom_kills = process.cgroup.usage().oom_kills if process.cgroup is not None else 0
        if oom_kills > status.oom_kills_seen:
            reason = "OOMKilled"
            code = code or 137  # SIGKILL, also when the exit code is not ours to read
        elif code == 0:
            reason = "Completed"
        else:
            reason = "Error"
        status.oom_kills_seen = oom_kills
        if reason not in self.restart_on:
            self._ignored[name] = process.process
            return
        if self.on_end is not None:
            self.on_end(name)
        with self._lock:
            status.last_reason = reason
            status.last_exit_code = code
            status.last_finished_at = time.time()
            status.failures += 1
            wait = self.backoff(status.failures)
            status.restart_at = now + wait
            self.events.append((name, reason, code))
        self.say(
            f"{name} terminated: {reason} (exit code {code}); restarting in {wait:g} s "
            f"(restart {status.restarts + 1}, see {process.log_path})"
        )

    def _restart(self, name: str, process: Supervised) -> None:
        status = self.status[name]
        if not port_is_free(process.port):
            with self._lock:  # its last connections still closing: soon, not a failure
                status.restart_at = time.monotonic() + 1.0
            return
        try:
            process.launch()
        except Exception as exc:  # the port still held, say: try again after the back-off
            with self._lock:
                status.failures += 1
                status.restart_at = time.monotonic() + self.backoff(status.failures)
            self.say(f"{name} could not restart ({exc}); trying again")
            return
        with self._lock:
            status.restarts += 1
            status.restart_at = None
            status.started_at = time.time()
            self._running_since[name] = time.monotonic()

    def snapshot(self) -> dict[str, ContainerStatus]:
        with self._lock:
            return {name: ContainerStatus(**vars(s)) for name, s in self.status.items()}
