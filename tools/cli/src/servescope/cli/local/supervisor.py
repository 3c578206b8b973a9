"""A small kubelet for local mode: restart what dies, with back-off, and say why it died.

The kubelet restarts a failed container after an exponential back-off (10 s, doubling, capped
at 5 minutes: `initialBackOff`/`MaxContainerBackOff` in pkg/kubelet) and records the last
termination's reason: `OOMKilled` when the kernel's OOM killer ended it (the runtime reads the
cgroup's OOM events), `Error` with the exit code for any other failure, `Completed` for exit 0.
kube-state-metrics then publishes `kube_pod_container_status_restarts_total` and
`kube_pod_container_status_last_terminated_reason{reason}`; `exporter.py` does the same from
the `ContainerStatus` kept here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from servescope.cli.local.process import ManagedProcess

BACKOFF_BASE_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 300.0
# The kubelet forgets a container's back-off once it has run this long without failing.
BACKOFF_RESET_SECONDS = 600.0


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
    """Watches processes on a thread; restarts each that ends, after kubelet's back-off."""

    def __init__(
        self,
        processes: dict[str, ManagedProcess],
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        reset_after: float = BACKOFF_RESET_SECONDS,
        say: Callable[[str], None] = print,
        poll: float = 0.1,
    ) -> None:
        self.processes = processes
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.reset_after = reset_after
        self.say = say
        self.poll = poll
        self.status = {name: ContainerStatus(name) for name in processes}
        self.events: list[tuple[str, str, int]] = []  # (name, reason, exit code)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running_since = {name: time.monotonic() for name in processes}
        for name, process in processes.items():
            if process.cgroup is not None:
                self.status[name].oom_kills_seen = process.cgroup.usage().oom_kills

    def backoff(self, failures: int) -> float:
        """The wait before restart number `failures` (1-based): base, 2 x base, ... capped."""
        return float(min(self.backoff_base * 2 ** max(failures - 1, 0), self.backoff_max))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop restarting (the caller then stops the processes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def supervises(self, process: ManagedProcess) -> bool:
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
            if process.process is None or process.running():
                if now - self._running_since[name] > self.reset_after:
                    status.failures = 0
                continue
            self._record(name, process, now)

    def _record(self, name: str, process: ManagedProcess, now: float) -> None:
        status = self.status[name]
        code = exit_code_of(process.process.returncode if process.process else None)
        oom_kills = process.cgroup.usage().oom_kills if process.cgroup is not None else 0
        if oom_kills > status.oom_kills_seen:
            reason = "OOMKilled"
        elif code == 0:
            reason = "Completed"
        else:
            reason = "Error"
        with self._lock:
            status.oom_kills_seen = oom_kills
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

    def _restart(self, name: str, process: ManagedProcess) -> None:
        status = self.status[name]
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
