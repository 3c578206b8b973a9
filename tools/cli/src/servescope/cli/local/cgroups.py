"""Memory and CPU cgroups for local mode: the kubelet's resource limits on plain processes.

Each limited (or merely accounted) process runs in a cgroup of its own, made by local mode
under the cgroup this process already belongs to (named in /proc/self/cgroup) and removed when
it stops. Two kernels' worth of files:

* cgroup v2 (most laptops and CI runners): one unified hierarchy where `memory` and `cpu`
  are listed in cgroup.controllers and can be enabled for children. Limits are `memory.max`
  and `cpu.max` ("QUOTA PERIOD"); accounting in `memory.current`, `memory.stat`,
  `memory.events` (`oom_kill`) and `cpu.stat` (`usage_usec`, `nr_periods`, `nr_throttled`).
* cgroup v1 (these Firecracker VMs): a hierarchy per controller, `memory/` with
  `memory.limit_in_bytes`, `memory.usage_in_bytes`, `memory.stat`, `memory.oom_control`
  (`oom_kill`), `cpu/` (or `cpu,cpuacct/`) with `cpu.cfs_quota_us`/`cpu.cfs_period_us` and
  `cpu.stat` (`nr_periods`, `nr_throttled`, `throttled_time`), and `cpuacct.usage` (ns).

The kubelet does the same through runc/libcontainer: a CPU limit of 500m becomes a CFS quota
of 50 ms per 100 ms period (kubelet `MilliCPUToQuota`), a memory limit the cgroup's hard limit.

Where neither hierarchy is writable (macOS, not root, no delegation, or `SERVESCOPE_CGROUP_ROOT`
pointing somewhere that is not a cgroup filesystem) `detect()` returns None with the reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000  # the kernel's and the kubelet's default CFS period (100 ms)

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_memory(text: str) -> int:
    """A Kubernetes memory quantity ('256Mi', '1G', '134217728') in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|K|M|G|T)?", text.strip())
    if not match:
        raise ValueError(f"memory {text!r}: write bytes or a quantity such as 128Mi or 1Gi")
    number, unit = match.groups()
    factor = _BINARY.get(unit or "", _DECIMAL.get(unit or "", 1))
    return int(float(number) * factor)


def parse_cpu(text: str) -> int:
    """A Kubernetes CPU quantity ('500m', '0.5', '2') in millicores."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m)?", text.strip())
    if not match:
        raise ValueError(f"cpu {text!r}: write millicores such as 500m, or cores such as 0.5")
    number, milli = match.groups()
    value = float(number) if milli else float(number) * 1000
    if value < 1:
        raise ValueError(f"cpu {text!r}: at least 1m")
    return int(value)


@dataclass(frozen=True)
class Limits:
    """A container's limits: memory in bytes, CPU in millicores; None is unlimited."""

    memory_bytes: int | None = None
    cpu_millicores: int | None = None

    def describe(self) -> str:
        parts = []
        if self.memory_bytes is not None:
            parts.append(f"memory {self.memory_bytes / (1 << 20):g} MiB")
        if self.cpu_millicores is not None:
            parts.append(f"cpu {self.cpu_millicores}m")
        return ", ".join(parts) or "unlimited"


def parse_limits(text: str) -> Limits:
    """'memory:256Mi,cpu:500m' -> Limits."""
    memory = cpu = None
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition(":")
        if not sep:
            raise ValueError(f"{part!r}: write RESOURCE:QUANTITY, e.g. memory:256Mi or cpu:500m")
        if key == "memory":
            memory = parse_memory(value)
        elif key == "cpu":
            cpu = parse_cpu(value)
        else:
            raise ValueError(f"{part!r}: the resources are memory and cpu")
    return Limits(memory, cpu)


def parse_limit_spec(spec: str, services: tuple[str, ...] | list[str]) -> tuple[str, Limits]:
    """'classifier=memory:256Mi,cpu:500m' -> ('classifier', Limits); ValueError otherwise."""
    service, sep, rest = spec.partition("=")
    if not sep or not rest:
        raise ValueError(
            f"--limit {spec!r}: write SERVICE=memory:QUANTITY,cpu:QUANTITY, "
            "e.g. classifier=memory:256Mi,cpu:500m"
        )
    if service not in services:
        raise ValueError(f"--limit {spec!r}: no service {service!r} (one of {', '.join(services)})")
    try:
        return service, parse_limits(rest)
    except ValueError as exc:
        raise ValueError(f"--limit {spec!r}: {exc}") from None


def _read(path: Path) -> str:
    return path.read_text().strip()


def _read_keyed(path: Path) -> dict[str, int]:
    """'key value' lines (memory.stat, cpu.stat, memory.events, memory.oom_control)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                values[key] = int(value)
    return values


@dataclass
class Usage:
    """One reading of a cgroup's accounting, in the units cAdvisor reports."""

    memory_usage_bytes: int = 0
    memory_limit_bytes: int = 0  # 0: unlimited (cAdvisor reports no limit as 0)
    memory_rss_bytes: int = 0
    memory_cache_bytes: int = 0
    memory_inactive_file_bytes: int = 0
    memory_mapped_file_bytes: int = 0
    memory_max_usage_bytes: int = 0
    oom_kills: int = 0
    cpu_usage_seconds: float = 0.0
    cpu_periods: int = 0
    cpu_throttled_periods: int = 0
    cpu_throttled_seconds: float = 0.0

    @property
    def working_set_bytes(self) -> int:
        # cAdvisor, container/libcontainer/handler.go setMemoryStats: workingSet = usage,
        # minus total_inactive_file (v1) / inactive_file (v2), floored at zero.
        return max(self.memory_usage_bytes - self.memory_inactive_file_bytes, 0)


class Cgroup:
    """One process's cgroup (in one or several hierarchies)."""

    version = 0

    def __init__(self, name: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits

    @property
    def procs_files(self) -> list[Path]:
        raise NotImplementedError

    @property
    def dirs(self) -> list[Path]:
        raise NotImplementedError

    def create(self) -> None:
        raise NotImplementedError

    def usage(self) -> Usage:
        raise NotImplementedError

    def wrap(self, command: list[str]) -> list[str]:
        """`command` started inside this cgroup: a shell joins it, then execs the command, so
        the process is limited from its first allocation and keeps the shell's PID."""
        joins = " && ".join(f'echo $$ > "${i + 1}"' for i in range(len(self.procs_files)))
        shift = len(self.procs_files)
        script = f'{joins} || exit 126; shift {shift}; exec "$@"'
        return ["/bin/sh", "-c", script, "sh", *map(str, self.procs_files), *command]

    def pids(self) -> list[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(line) for line in procs.read_text().split())
        return sorted(found)

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left inside (only processes local mode put there) and rmdir."""
        deadline = time.monotonic() + timeout
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for directory in self.dirs:
            while directory.exists():
                try:
                    directory.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


class CgroupV1(Cgroup):
    version = 1

    def __init__(self, name: str, limits: Limits, memory: Path, cpu: Path, cpuacct: Path) -> None:
        super().__init__(name, limits)
        self.memory = memory
        self.cpu = cpu
        self.cpuacct = cpuacct

    @property
    def dirs(self) -> list[Path]:
        return list(dict.fromkeys([self.memory, self.cpu, self.cpuacct]))

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def create(self) -> None:
        for directory in self.dirs:
            directory.mkdir()
        if self.limits.memory_bytes is not None:
            (self.memory / "memory.limit_in_bytes").write_text(str(self.limits.memory_bytes))
            # No swap beyond the limit, as the kubelet runs containers (memsw exists only with
            # swap accounting).
            with contextlib.suppress(OSError):
                (self.memory / "memory.memsw.limit_in_bytes").write_text(
                    str(self.limits.memory_bytes)
                )
        if self.limits.cpu_millicores is not None:
            (self.cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            quota = self.limits.cpu_millicores * CFS_PERIOD_US // 1000
            (self.cpu / "cpu.cfs_quota_us").write_text(str(quota))

    def usage(self) -> Usage:
        stat = _read_keyed(self.memory / "memory.stat")
        cpu = _read_keyed(self.cpu / "cpu.stat")
        limit = self.limits.memory_bytes or 0
        try:
            usage_ns = int(_read(self.cpuacct / "cpuacct.usage"))
            memory_usage = int(_read(self.memory / "memory.usage_in_bytes"))
            max_usage = int(_read(self.memory / "memory.max_usage_in_bytes"))
        except (OSError, ValueError):
            usage_ns = memory_usage = max_usage = 0
        # cAdvisor (container/libcontainer/handler.go): v1 RSS is total_rss, cache total_cache,
        # mapped file total_mapped_file; the working set subtracts total_inactive_file.
        return Usage(
            memory_usage_bytes=memory_usage,
            memory_limit_bytes=limit,
            memory_rss_bytes=stat.get("total_rss", stat.get("rss", 0)),
            memory_cache_bytes=stat.get("total_cache", stat.get("cache", 0)),
            memory_inactive_file_bytes=stat.get(
                "total_inactive_file", stat.get("inactive_file", 0)
            ),
            memory_mapped_file_bytes=stat.get("total_mapped_file", stat.get("mapped_file", 0)),
            memory_max_usage_bytes=max_usage,
            oom_kills=_read_keyed(self.memory / "memory.oom_control").get("oom_kill", 0),
            cpu_usage_seconds=usage_ns / 1e9,
            cpu_periods=cpu.get("nr_periods", 0),
            cpu_throttled_periods=cpu.get("nr_throttled", 0),
            cpu_throttled_seconds=cpu.get("throttled_time", 0) / 1e9,
        )


class CgroupV2(Cgroup):
    version = 2

    def __init__(self, name: str, limits: Limits, path: Path) -> None:
        super().__init__(name, limits)
        self.path = path

    @property
    def dirs(self) -> list[Path]:
        return [self.path]

    @property
    def procs_files(self) -> list[Path]:
        return [self.path / "cgroup.procs"]

    def create(self) -> None:
        self.path.mkdir()
        if self.limits.memory_bytes is not None:
            (self.path / "memory.max").write_text(str(self.limits.memory_bytes))
            with contextlib.suppress(OSError):
                (self.path / "memory.swap.max").write_text("0")
        if self.limits.cpu_millicores is not None:
            quota = self.limits.cpu_millicores * CFS_PERIOD_US // 1000
            (self.path / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")

    def usage(self) -> Usage:
        stat = _read_keyed(self.path / "memory.stat")
        cpu = _read_keyed(self.path / "cpu.stat")
        try:
            memory_usage = int(_read(self.path / "memory.current"))
        except (OSError, ValueError):
            memory_usage = 0
        peak = 0
        with contextlib.suppress(OSError, ValueError):
            peak = int(_read(self.path / "memory.peak"))
        # cAdvisor on v2: RSS is `anon`, cache `file`, mapped file `file_mapped`, the working
        # set subtracts `inactive_file`; OOM kills from memory.events.
        return Usage(
            memory_usage_bytes=memory_usage,
            memory_limit_bytes=self.limits.memory_bytes or 0,
            memory_rss_bytes=stat.get("anon", 0),
            memory_cache_bytes=stat.get("file", 0),
            memory_inactive_file_bytes=stat.get("inactive_file", 0),
            memory_mapped_file_bytes=stat.get("file_mapped", 0),
            memory_max_usage_bytes=peak,
            oom_kills=_read_keyed(self.path / "memory.events").get("oom_kill", 0),
            cpu_usage_seconds=cpu.get("usage_usec", 0) / 1e6,
            cpu_periods=cpu.get("nr_periods", 0),
            cpu_throttled_periods=cpu.get("nr_throttled", 0),
            cpu_throttled_seconds=cpu.get("throttled_usec", 0) / 1e6,
        )


def _own_paths(proc_cgroup: str) -> tuple[dict[str, str], str | None]:
    """/proc/self/cgroup -> ({v1 controller: path}, v2 path)."""
    v1: dict[str, str] = {}
    v2 = None
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2 = path
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    return v1, v2


@dataclass
class CgroupDriver:
    """Makes cgroups under one parent per controller; `version` says which hierarchy."""

    version: int
    parents: dict[str, Path]  # v1: memory, cpu, cpuacct; v2: unified
    prefix: str = ""

    def __post_init__(self) -> None:
        self.prefix = self.prefix or f"servescope-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def describe(self) -> str:
        return f"cgroup v{self.version} under " + ", ".join(
            str(p) for p in dict.fromkeys(self.parents.values())
        )

    def remove_stale(self) -> list[Path]:
        """Remove the empty cgroups a killed (never cleaned up) local mode left behind: those
        named for a process that no longer exists. Returns what was removed."""
        removed = []
        for parent in dict.fromkeys(self.parents.values()):
            with contextlib.suppress(OSError):
                for child in parent.iterdir():
                    match = re.match(r"servescope-(\d+)-", child.name)
                    if not match or not child.is_dir() or _alive(int(match[1])):
                        continue
                    with contextlib.suppress(OSError):
                        if not (child / "cgroup.procs").read_text().strip():
                            child.rmdir()
                            removed.append(child)
        return removed

    def new(self, name: str, limits: Limits) -> Cgroup:
        """A created cgroup for `name`; OSError when the kernel refuses."""
        leaf = f"{self.prefix}-{name}"
        cgroup: Cgroup
        if self.version == 2:
            cgroup = CgroupV2(name, limits, self.parents["unified"] / leaf)
        else:
            cgroup = CgroupV1(
                name,
                limits,
                self.parents["memory"] / leaf,
                self.parents["cpu"] / leaf,
                self.parents["cpuacct"] / leaf,
            )
        try:
            cgroup.create()
        except BaseException:
            with contextlib.suppress(OSError):
                cgroup.remove()
            raise
        return cgroup


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _v1_dir(root: Path, controller: str, proc_lines: str) -> Path | None:
    for line in proc_lines.splitlines():
        _, controllers, _ = line.split(":", 2)
        names = controllers.split(",")
        if controller in names:
            for candidate in (root / controllers, root / controller):
                if candidate.is_dir():
                    return candidate
    return None


def _probe(make: CgroupDriver, check_file: str) -> str | None:
    """Make and remove one child; None when that works, else why not."""
    probe = make.new("probe", Limits())
    try:
        if not (probe.dirs[0] / check_file).exists():
            return f"{probe.dirs[0].parent} is not a cgroup filesystem"
    finally:
        probe.remove(timeout=1.0)
    return None


def detect(root: Path | None = None) -> tuple[CgroupDriver | None, str]:
    """A working driver (v2 first, then v1) and how it was found, or None and why not.

    `root` (default: $SERVESCOPE_CGROUP_ROOT, else /sys/fs/cgroup) is where the hierarchies are
    mounted; pointing it at an ordinary or unwritable directory simulates a machine without
    cgroup access.
    """
    root = root or Path(os.environ.get("SERVESCOPE_CGROUP_ROOT") or DEFAULT_ROOT)
    try:
        proc = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None, "no /proc/self/cgroup (not Linux)"
    v1_paths, v2_path = _own_paths(proc)
    reasons = []

    # cgroup v2: the unified hierarchy at the root, or at root/unified in hybrid mode.
    if v2_path is not None:
        for base in (root, root / "unified"):
            parent = base / v2_path.lstrip("/")
            controllers_file = parent / "cgroup.controllers"
            if not controllers_file.is_file():
                continue
            available = set(_read(controllers_file).split())
            if not {"memory", "cpu"} <= available:
                reasons.append(f"v2 at {base} lacks the memory and cpu controllers")
                continue
            try:
                enabled = set(_read(parent / "cgroup.subtree_control").split())
                missing = {"memory", "cpu"} - enabled
                if missing:
                    (parent / "cgroup.subtree_control").write_text(
                        " ".join(f"+{c}" for c in sorted(missing))
                    )
                driver = CgroupDriver(2, {"unified": parent})
                why = _probe(driver, "memory.max")
            except OSError as exc:
                why = f"v2 at {parent} is not writable ({exc.strerror or exc})"
            if why is None:
                return driver, driver.describe()
            reasons.append(why)

    # cgroup v1: one hierarchy per controller.
    parents: dict[str, Path] = {}
    for controller in ("memory", "cpu", "cpuacct"):
        mount = _v1_dir(root, controller, proc)
        if mount is None or controller not in v1_paths:
            break
        parents[controller] = mount / v1_paths[controller].lstrip("/")
    if len(parents) == 3:
        driver = CgroupDriver(1, parents)
        try:
            why = _probe(driver, "memory.limit_in_bytes")
        except OSError as exc:
            why = f"v1 under {root} is not writable ({exc.strerror or exc})"
        if why is None:
            return driver, driver.describe()
        reasons.append(why)
    elif not reasons:
        reasons.append(f"no memory and cpu cgroup hierarchy under {root}")
    return None, "; ".join(reasons)
