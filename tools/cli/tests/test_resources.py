"""Local mode's resource limits on the real kernel: cgroups, the supervisor, the exporter.

A small standalone Python process stands in for a service: it allocates anonymous memory (or
burns CPU) inside a cgroup made by `cgroups.detect()`, so the kernel's OOM killer and CFS
throttling are the real ones. Skips where this machine gives no writable cgroups.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servescope.cli.local.cgroups import (
    Limits,
    detect,
    parse_cpu,
    parse_limit_spec,
    parse_memory,
)
from servescope.cli.local.exporter import Container, cadvisor_text, kube_state_text
from servescope.cli.local.process import ManagedProcess
from servescope.cli.local.supervisor import Supervisor, exit_code_of

MiB = 1 << 20


class Script(ManagedProcess):
    """A Python one-liner as a managed process (no port)."""

    def __init__(self, name: str, run_dir: Path, code: str) -> None:
        super().__init__(name, 0, run_dir)
        self.code = code

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code]


ALLOCATE = (
    "import time\nchunks = []\nfor _ in range({mib}):\n"
    "    chunks.append(bytearray(b'x' * (1 << 20)))\n    time.sleep(0.002)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def driver():
    found, why = detect()
    if found is None:
        pytest.skip(f"no writable memory and cpu cgroups here: {why}")
    return found


@pytest.fixture
def cgroups(driver):
    made = []

    def make(name: str, limits: Limits):
        cgroup = driver.new(name, limits)
        made.append(cgroup)
        return cgroup

    yield make
    for cgroup in made:
        cgroup.remove()
        assert not any(d.exists() for d in cgroup.dirs)


def test_quantities() -> None:
    assert parse_memory("256Mi") == 256 * MiB
    assert parse_memory("1G") == 10**9
    assert parse_memory("1048576") == MiB
    assert parse_cpu("500m") == 500
    assert parse_cpu("1.5") == 1500
    service, limits = parse_limit_spec("classifier=memory:64Mi,cpu:250m", ("classifier",))
    assert (service, limits) == ("classifier", Limits(64 * MiB, 250))
    for bad in ("classifier", "nope=memory:1Mi", "classifier=disk:1Gi", "classifier=memory:lots"):
        with pytest.raises(ValueError, match="--limit"):
            parse_limit_spec(bad, ("classifier",))


def test_backoff_doubles_to_the_cap() -> None:
    """The kubelet's: the first restart at once, then 10 s doubling to 5 min."""
    supervisor = Supervisor({})
    assert [supervisor.backoff(n) for n in range(1, 9)] == [0, 10, 20, 40, 80, 160, 300, 300]
    assert exit_code_of(-9) == 137 and exit_code_of(3) == 3


def test_no_cgroup_access_is_detected_not_faked(tmp_path: Path) -> None:
    """An unwritable (or ordinary) directory as the cgroup root: no driver, and why."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "memory").mkdir()
    root.chmod(0o555)
    try:
        found, why = detect(root)
    finally:
        root.chmod(0o755)
    assert found is None
    assert why


def test_the_kernel_oom_kills_over_the_limit_and_the_supervisor_restarts(
    cgroups, tmp_path: Path
) -> None:
    cgroup = cgroups("hog", Limits(memory_bytes=64 * MiB))
    hog = Script("hog", tmp_path, ALLOCATE.format(mib=200))
    hog.cgroup = cgroup
    said: list[str] = []
    supervisor = Supervisor({"hog": hog}, backoff_base=0.2, say=said.append, poll=0.02)
    started = time.monotonic()
    hog.launch()
    supervisor.start()
    peak_usage = 0
    try:
        deadline = time.monotonic() + 30
        while supervisor.snapshot()["hog"].restarts < 2 and time.monotonic() < deadline:
            peak_usage = max(peak_usage, cgroup.usage().memory_usage_bytes)
            time.sleep(0.02)
    finally:
        supervisor.stop()
        hog.stop(timeout=2)
    status = supervisor.snapshot()["hog"]
    assert status.restarts >= 2, (said, hog.log_tail())
    assert status.last_reason == "OOMKilled"
    assert status.last_exit_code == 137
    assert supervisor.events[0] == ("hog", "OOMKilled", 137)
    assert cgroup.usage().oom_kills >= 2
    assert peak_usage <= 64 * MiB and cgroup.usage().memory_max_usage_bytes >= 60 * MiB
    assert "OOMKilled" in said[0] and "restarting in 0 s" in said[0]  # the first at once
    assert "restarting in 0.2 s" in said[1]  # then the back-off
    print(f"first OOM kill and two restarts in {time.monotonic() - started:.1f} s")


def test_other_endings_are_error_with_the_code_or_completed(cgroups, tmp_path: Path) -> None:
    failing = Script("failing", tmp_path, "raise SystemExit(3)")
    failing.cgroup = cgroups("failing", Limits(memory_bytes=64 * MiB))
    done = Script("done", tmp_path, "pass")  # no cgroup at all: still supervised
    supervisor = Supervisor({"failing": failing, "done": done}, backoff_base=5, say=lambda _: None)
    failing.launch()
    done.launch()
    failing.process.wait(10)
    done.process.wait(10)
    supervisor.check()
    statuses = supervisor.snapshot()
    assert (statuses["failing"].last_reason, statuses["failing"].last_exit_code) == ("Error", 3)
    assert (statuses["done"].last_reason, statuses["done"].last_exit_code) == ("Completed", 0)
    assert statuses["failing"].restart_at is not None  # backing off, not restarted yet
    assert statuses["failing"].restarts == 0
    text = kube_state_text([Container("failing"), Container("done")], statuses)
    assert 'container="failing"' in text and 'reason="Error"' in text
    assert 'reason="Completed"' in text


def test_a_cpu_limit_throttles(cgroups, tmp_path: Path) -> None:
    cgroup = cgroups("burner", Limits(cpu_millicores=200))
    burner = Script(
        "burner", tmp_path, "import time\nend = time.time() + 2\nwhile time.time() < end: pass"
    )
    burner.cgroup = cgroup
    burner.launch()
    assert burner.process is not None
    burner.process.wait(20)
    usage = cgroup.usage()
    # 200m: 20 ms of CPU per 100 ms period, so ~0.4 s of CPU in 2 s, throttled nearly always.
    assert usage.cpu_periods >= 15
    assert usage.cpu_throttled_periods >= 0.7 * usage.cpu_periods
    assert 0.2 < usage.cpu_usage_seconds < 0.7


def test_the_exposition_is_valid_and_names_what_the_rules_select(cgroups, tmp_path: Path) -> None:
    cgroup = cgroups("classifier", Limits(64 * MiB, 500))
    sleeper = Script("classifier", tmp_path, ALLOCATE.format(mib=8))
    sleeper.cgroup = cgroup
    sleeper.launch()
    try:
        time.sleep(0.5)
        container = Container("classifier", cgroup.limits, cgroup)
        cadvisor = cadvisor_text([container])
        ksm = kube_state_text([container], {})
    finally:
        sleeper.stop(timeout=2)
    for name in (
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_memory_cache",
        "container_memory_usage_bytes",
        "container_spec_memory_limit_bytes",
        "container_cpu_usage_seconds_total",
        "container_cpu_cfs_throttled_periods_total",
        "container_cpu_cfs_periods_total",
    ):
        assert f'{name}{{container="classifier",' in cadvisor, name
    assert 'image="servescope-classifier:local"' in cadvisor
    assert 'namespace="servescope",pod="servescope-classifier-local"' in cadvisor
    assert f'resource="memory",unit="byte"}} {64 * MiB}' in ksm
    assert 'kube_pod_container_status_restarts_total{namespace="servescope"' in ksm
    rss = next(
        float(line.split()[-1])
        for line in cadvisor.splitlines()
        if line.startswith("container_memory_rss{")
    )
    assert rss >= 8 * MiB
    promtool = shutil.which("promtool")
    if promtool:
        for text in (cadvisor, ksm):
            checked = subprocess.run(
                [promtool, "check", "metrics"], input=text, text=True, capture_output=True
            )
            # promtool lints names too (cAdvisor's own `container_memory_rss` has no unit
            # suffix); only a parse error fails here.
            assert "error while linting" not in checked.stderr, checked.stderr


def test_up_limit_flags_merge_per_service() -> None:
    from servescope.cli.commands.up import parse_limits

    limits = parse_limits(["classifier=memory:128Mi", "classifier=cpu:500m", "preprocess=cpu:1"])
    assert limits == {
        "classifier": Limits(128 * MiB, 500),
        "preprocess": Limits(None, 1000),
    }
    with pytest.raises(ValueError, match="no service 'model'"):
        parse_limits(["model=memory:1Gi"])


def test_v2_files_are_read_with_cadvisors_v2_names(tmp_path: Path) -> None:
    """No v2 hierarchy with controllers here: the same files, written by hand."""
    from servescope.cli.local.cgroups import CgroupV2

    (tmp_path / "memory.current").write_text("104857600\n")
    (tmp_path / "memory.peak").write_text("134217728\n")
    (tmp_path / "memory.stat").write_text(
        "anon 41943040\nfile 62914560\ninactive_file 20971520\nfile_mapped 1048576\n"
    )
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n")
    (tmp_path / "cpu.stat").write_text(
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
        "nr_periods 40\nnr_throttled 30\nthrottled_usec 900000\n"
    )
    usage = CgroupV2("x", Limits(128 * MiB, 500), tmp_path).usage()
    assert usage.memory_usage_bytes == 100 * MiB
    assert usage.working_set_bytes == 80 * MiB  # usage minus inactive_file
    assert (usage.memory_rss_bytes, usage.memory_cache_bytes) == (40 * MiB, 60 * MiB)
    assert usage.memory_limit_bytes == 128 * MiB and usage.memory_max_usage_bytes == 128 * MiB
    assert usage.oom_kills == 2
    assert usage.cpu_usage_seconds == 2.5
    assert (usage.cpu_periods, usage.cpu_throttled_periods) == (40, 30)
    assert usage.cpu_throttled_seconds == 0.9
    command = CgroupV2("x", Limits(), tmp_path).wrap(["python", "-V"])
    assert command[:2] == ["/bin/sh", "-c"] and command[-2:] == ["python", "-V"]
    assert str(tmp_path / "cgroup.procs") in command


def test_cgroups_left_by_a_killed_up_are_removed(driver) -> None:
    """`up` killed with SIGKILL cannot clean up; the next run removes its empty cgroups."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale_driver = type(driver)(
        driver.version, driver.parents, f"servescope-{int(dead.stdout)}-old"
    )
    stale = stale_driver.new("classifier", Limits(64 * MiB))
    assert all(d.exists() for d in stale.dirs)
    mine = driver.new("mine", Limits())
    try:
        removed = driver.remove_stale()
        assert set(stale.dirs) <= set(removed)
        assert not any(d.exists() for d in stale.dirs)
        assert all(d.exists() for d in mine.dirs)
    finally:
        mine.remove()
        for d in stale.dirs:
            if d.exists():
                d.rmdir()
