"""Shared by the lab tests: a copy of the repository to run labs against, free ports, and
the `servescope lab` command run in-process.

Labs run against a temporary copy of the repository (`--root`), never the checkout: some
labs edit repository files, and every lab writes a workspace under labs/. Each test gets
its own run directory and six free consecutive ports (`--port-base`), so nothing collides
with a learner's `servescope up` or lab. Every process a lab starts is stopped by PID at
teardown, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import io
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from servescope.cli.labs.processes import port_in_use, stop_pid
from servescope.cli.labs.store import Store
from servescope.cli.main import main
from servescope.cli.paths import repo_root

CHECKOUT = repo_root()
NOT_COPIED = {
    ".git",
    ".venv",
    ".run",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "__pycache__",
}


def copy_repository(target: Path) -> Path:
    """The checkout's files (no VCS, environment, run state, caches or lab workspaces)."""

    def ignore(directory: str, names: list[str]) -> list[str]:
        skipped = [n for n in names if n in NOT_COPIED]
        if Path(directory).parent.parent.name == "labs":  # labs/<stage>/<lab>/work
            skipped += [n for n in names if n == "work"]
        return skipped

    shutil.copytree(CHECKOUT, target, ignore=ignore, symlinks=True)
    return target


def free_port_base() -> int:
    """A port P with P..P+5 all free on 127.0.0.1 (a lab's services, Prometheus, ...).

    Chosen below the kernel's ephemeral range (32768+ on Linux), where no outgoing
    connection of any other process can take one of the six between the check and the bind.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - 6)
        if not any(port_in_use(port) for port in range(base, base + 6)):
            return base
    raise RuntimeError("no six consecutive free ports found in 20000-32000")


@dataclass
class LabCLI:
    """`servescope lab ...` against one repository copy, run directory and port range."""

    root: Path
    run_dir: Path
    port_base: int

    def __call__(self, *args: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(
                [
                    "lab",
                    *args,
                    f"--root={self.root}",
                    f"--run-dir={self.run_dir}",
                    f"--port-base={self.port_base}",
                ]
            )
        return code, out.getvalue()

    @property
    def store(self) -> Store:
        return Store(self.run_dir)

    def pids(self) -> list[tuple[int, str | None]]:
        record = self.store.running() or {}
        return [(int(p["pid"]), p.get("start_time")) for p in record.get("processes", [])]

    def logs(self) -> dict[int, str]:
        """Each recorded process's log path, by PID."""
        record = self.store.running() or {}
        return {int(p["pid"]): p.get("log") or "" for p in record.get("processes", [])}

    def ports(self) -> range:
        return range(self.port_base, self.port_base + 6)

    def kill_all(self) -> None:
        """Belt and braces: every recorded process, by PID (SIGKILL if SIGTERM is ignored)."""
        for pid, started in self.pids():
            with contextlib.suppress(Exception):
                stop_pid(pid, started, timeout=5)
        self.store.clear_running()


@pytest.fixture(scope="session")
def lab_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the repository shared by the lab lifecycle tests: each test ends with
    `reset`, which restores what its lab changed (and the test checks it did)."""
    return copy_repository(tmp_path_factory.mktemp("labs") / "repo")


@pytest.fixture
def lab_cli(lab_repo: Path, tmp_path: Path) -> Iterator[LabCLI]:
    cli = LabCLI(lab_repo, tmp_path / "run", free_port_base())
    yield cli
    cli.kill_all()
