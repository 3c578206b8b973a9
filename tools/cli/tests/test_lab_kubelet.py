"""A lab's kubelet restarts OOM-killed services with local mode's Supervisor.

No kernel needed: a stand-in cgroup says which processes it holds and how many OOM kills it
has seen, as `Cgroup.pids()` and `Cgroup.usage().oom_kills` do; `lab start`'s service is a
PID the kubelet did not start; the restart is a real child (a sleeping Python), stopped here.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from servescope.cli.labs.kubelet import LAB_BACKOFF, oom_restarter, stop_children
from servescope.cli.local.exporter import Container, kube_state_text
from servescope.cli.local.process import free_port
from servescope.cli.local.supervisor import BackOff, Supervisor
from servescope.telemetry.faultspec import cache_file_name


@dataclass
class Usage:
    oom_kills: int = 0


@dataclass
class FakeCgroup:
    members: list[int] = field(default_factory=list)
    oom_kills: int = 0
    wrapped: list[list[str]] = field(default_factory=list)

    def pids(self) -> list[int]:
        return list(self.members)

    def usage(self) -> Usage:
        return Usage(self.oom_kills)

    def wrap(self, command: list[str]) -> list[str]:
        self.wrapped.append(command)
        return command


@pytest.fixture
def lab(tmp_path: Path):
    cgroup = FakeCgroup()
    spec = {
        "command": [sys.executable, "-c", "import time; time.sleep(60)"],
        "env": {"SERVESCOPE_FAULT_CACHE_DIR": str(tmp_path)},
        "log": str(tmp_path / "classifier.log"),
        "port": free_port(),
    }
    said: list[str] = []
    supervisor, watched = oom_restarter(
        {"classifier": cgroup, "unlisted": FakeCgroup()},  # type: ignore[dict-item]
        {"classifier": spec},
        say=said.append,
    )
    yield supervisor, watched, cgroup, said, tmp_path
    supervisor.stop()
    stop_children(watched.values(), timeout=2)


def test_the_lab_policy_is_local_modes_on_a_compressed_clock() -> None:
    assert BackOff(base=2.0, cap=40.0) == LAB_BACKOFF
    assert LAB_BACKOFF.reset_after == BackOff().reset_after
    waits = [LAB_BACKOFF.wait(n) for n in range(1, 9)]
    assert waits == [0, 2, 4, 8, 16, 32, 40, 40]
    assert [Supervisor({}, policy=LAB_BACKOFF).backoff(n) for n in range(1, 9)] == waits


def test_an_oom_killed_service_restarts_at_once_then_after_the_back_off(lab) -> None:
    supervisor, watched, cgroup, said, cache_dir = lab
    assert set(watched) == {"classifier"}  # only what --services lists
    supervisor.check()  # not started yet: nothing ended
    assert said == [] and supervisor.snapshot()["classifier"].restart_at is None

    cgroup.members = [4242]  # `lab start` launched it
    supervisor.check()
    cache = cache_dir / cache_file_name("classifier", 4242)
    cache.write_bytes(b"x")
    cgroup.members, cgroup.oom_kills = [], 1  # the OOM killer ended it
    supervisor.check()
    status = supervisor.snapshot()["classifier"]
    assert (status.last_reason, status.last_exit_code, status.restarts) == ("OOMKilled", 137, 0)
    assert said == [
        "classifier terminated: OOMKilled (exit code 137); restarting in 0 s "
        f"(restart 1, see {cache_dir / 'classifier.log'})"
    ]
    assert not cache.exists()  # its tmpfs pages go with the file

    supervisor.check()  # the first restart is at once, in the same cgroup
    child = watched["classifier"].process
    assert isinstance(child, subprocess.Popen) and child.poll() is None
    assert cgroup.wrapped == [[str(p) for p in watched["classifier"].spec["command"]]]
    assert supervisor.snapshot()["classifier"].restarts == 1

    cgroup.members = [child.pid]
    supervisor.check()
    child.kill()
    child.wait()
    cgroup.members, cgroup.oom_kills = [], 2
    supervisor.check()
    assert "restarting in 2 s (restart 2," in said[1]  # then LAB_BACKOFF's base
    status = supervisor.snapshot()["classifier"]
    assert (status.last_reason, status.last_exit_code, status.failures) == ("OOMKilled", 137, 2)
    supervisor.check()
    assert supervisor.snapshot()["classifier"].restarts == 1  # still backing off

    text = kube_state_text([Container("classifier"), Container("unlisted")], supervisor.snapshot())
    assert 'container="classifier"' in text and 'reason="OOMKilled"' in text
    restarts = [
        line
        for line in text.splitlines()
        if line.startswith("kube_pod_container_status_restarts_total{")
    ]
    assert any('container="unlisted"' in line and line.endswith(" 0") for line in restarts)
    assert any('container="classifier"' in line and line.endswith(" 1") for line in restarts)


def test_any_other_ending_is_neither_recorded_nor_restarted(lab) -> None:
    supervisor, watched, cgroup, said, _ = lab
    cgroup.members = [4242]
    supervisor.check()
    cgroup.members = []  # `lab stop`, or the crash fault: no new OOM kill
    for _ in range(3):
        supervisor.check()
    status = supervisor.snapshot()["classifier"]
    assert (status.last_reason, status.restart_at, status.restarts) == (None, None, 0)
    assert said == [] and watched["classifier"].process is not None
    assert not isinstance(watched["classifier"].process, subprocess.Popen)

    cgroup.members = [4343]  # started again by the lab, then OOM-killed: restarted
    supervisor.check()
    cgroup.members, cgroup.oom_kills = [], 1
    supervisor.check()
    assert supervisor.snapshot()["classifier"].last_reason == "OOMKilled"
    assert len(said) == 1
