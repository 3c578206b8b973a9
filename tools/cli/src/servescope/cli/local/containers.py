"""The kubelet's part of local mode, in one place: cgroups, the supervisor and the exporter.

`LocalSession` (what `servescope up` runs) and the tests use this same class:

    runtime = ContainerRuntime(stack.services, limits={"classifier": Limits(128 * MiB)})
    runtime.prepare()   # a cgroup per process (limited or only accounted), before launch
    stack.start()
    runtime.start(exporter_port)   # supervisor thread + /metrics/cadvisor, /metrics/kube-state-metrics
    ...
    runtime.stop_supervising()     # before stopping the processes, so none is restarted
    stack.stop()
    runtime.close()                # exporter down, cgroups removed
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from servescope.cli.local.cgroups import Cgroup, CgroupDriver, Limits, detect
from servescope.cli.local.exporter import Container, Exporter
from servescope.cli.local.process import ManagedProcess
from servescope.cli.local.supervisor import BACKOFF_BASE_SECONDS, Supervisor


@dataclass
class ContainerRuntime:
    processes: Mapping[str, ManagedProcess]
    limits: dict[str, Limits] = field(default_factory=dict)
    cgroup_root: Path | None = None  # None: $SERVESCOPE_CGROUP_ROOT or /sys/fs/cgroup
    backoff_base: float = BACKOFF_BASE_SECONDS
    supervise: bool = True
    say: Callable[[str], None] = print

    driver: CgroupDriver | None = None
    cgroups: dict[str, Cgroup] = field(default_factory=dict)
    supervisor: Supervisor | None = None
    exporter: Exporter | None = None
    notice: str | None = None  # the one line saying limits are off, and why
    scratch: dict[str, Path] = field(default_factory=dict)  # per-process tmpfs directories

    def _make_scratch(self) -> None:
        """A tmpfs directory per process for the `cache` fault (SERVESCOPE_FAULT_CACHE_DIR),
        removed with it, like a pod's `emptyDir: {medium: Memory}`: tmpfs pages outlive a
        killed process and stay charged to memory until their file is deleted."""
        shm = Path("/dev/shm")  # noqa: S108 - tmpfs on purpose
        if not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
            return
        for name, process in self.processes.items():
            if process.env is None or "SERVESCOPE_FAULT_CACHE_DIR" in process.env:
                continue
            path = Path(tempfile.mkdtemp(prefix=f"servescope-{os.getpid()}-{name}-", dir=shm))
            self.scratch[name] = path
            process.env["SERVESCOPE_FAULT_CACHE_DIR"] = str(path)

    def prepare(self) -> None:
        """A cgroup per process where the kernel allows; else `notice` says why (if limits
        were asked for) and every process runs unlimited."""
        self._make_scratch()
        driver, how = detect(self.cgroup_root)
        if driver is None:
            if self.limits:
                self.notice = (
                    f"resource limits need writable memory and cpu cgroups ({how}); "
                    "running without limits"
                )
            return
        driver.remove_stale()
        try:
            for name, process in self.processes.items():
                cgroup = driver.new(name, self.limits.get(name, Limits()))
                self.cgroups[name] = cgroup
                process.cgroup = cgroup
        except OSError as exc:
            self._remove_cgroups()
            if self.limits:
                self.notice = (
                    f"resource limits need writable cgroups ({exc}); running without limits"
                )
            return
        self.driver = driver

    def start(self, exporter_port: int | None = 0) -> None:
        """The supervisor (if wanted) and the exporter (unless the port is None; 0: any)."""
        if self.supervise:
            self.supervisor = Supervisor(
                dict(self.processes), backoff_base=self.backoff_base, say=self.say
            )
            self.supervisor.start()
        if exporter_port is not None:
            containers = [
                Container(
                    name,
                    self.limits.get(name, Limits()) if name in self.cgroups else Limits(),
                    self.cgroups.get(name),
                )
                for name in self.processes
            ]
            supervisor = self.supervisor
            self.exporter = Exporter(
                containers, supervisor.snapshot if supervisor else dict, exporter_port
            )
            self.exporter.start()

    def supervises(self, process: ManagedProcess) -> bool:
        return self.supervisor is not None and self.supervisor.supervises(process)

    def stop_supervising(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()

    def close(self) -> None:
        """Stop supervising and exporting, and remove the cgroups (processes stopped first)."""
        self.stop_supervising()
        if self.exporter is not None:
            with contextlib.suppress(Exception):
                self.exporter.stop()
        self._remove_cgroups()
        for path in self.scratch.values():
            shutil.rmtree(path, ignore_errors=True)
        self.scratch = {}

    def _remove_cgroups(self) -> None:
        for name, cgroup in list(self.cgroups.items()):
            try:
                cgroup.remove()
            except OSError as exc:
                self.say(f"warning: could not remove {cgroup.dirs[0]}: {exc}")
            process = self.processes.get(name)
            if process is not None:
                process.cgroup = None
        self.cgroups = {}
