"""Fixtures shared by the cross-service tests: real service processes on free ports.

Every process a test starts is stopped by PID in a finalizer, whatever the test's outcome,
and every request goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from servescope.cli.local.services import SERVICES, LocalStack, LocalStackError, free_port
from servescope.cli.paths import bundled_model_dir

# Port choice races with everything else on the machine: a port found free can be taken
# before the service binds it. Starting again on fresh ports hides only that race.
START_ATTEMPTS = 3


def _start(
    run_dir: Path,
    env: dict[str, dict[str, str]] | None,
    names: tuple[str, ...],
    model_repository: Path | None = None,
) -> LocalStack:
    last: LocalStackError | None = None
    for attempt in range(START_ATTEMPTS):
        stack = LocalStack(
            ports={name: free_port() for name in SERVICES},
            run_dir=run_dir / f"attempt-{attempt}",
            env=env or {},
            model_repository=model_repository,
        )
        try:
            if names == SERVICES:
                stack.start(timeout=30)
            else:
                for name in names:
                    stack.services[name].launch()
                stack.wait_ready(30, names)
        except LocalStackError as exc:
            stack.stop()
            last = exc
            if not _lost_port_race(stack, exc):
                raise
            continue
        except BaseException:
            stack.stop()
            raise
        return stack
    assert last is not None
    raise last


def _lost_port_race(stack: LocalStack, exc: LocalStackError) -> bool:
    if "already in use" in str(exc) or "is taken" in str(exc):
        return True
    for service in stack.services.values():
        with contextlib.suppress(OSError):
            if "address already in use" in service.log_path.read_text(errors="replace").lower():
                return True
    return False


class StackStarter:
    """Starts LocalStacks (or some of their services) and stops them all at teardown."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.stacks: list[LocalStack] = []

    def __call__(
        self,
        env: dict[str, dict[str, str]] | None = None,
        names: tuple[str, ...] = SERVICES,
        model_repository: Path | None = None,
    ) -> LocalStack:
        run_dir = self.run_dir / f"stack-{len(self.stacks)}"
        stack = _start(run_dir, env, names, model_repository)
        self.stacks.append(stack)
        return stack

    def unstarted(self, env: dict[str, dict[str, str]] | None = None) -> LocalStack:
        """A stack whose processes the test starts itself; still stopped at teardown."""
        stack = LocalStack(
            ports={name: free_port() for name in SERVICES},
            run_dir=self.run_dir / f"stack-{len(self.stacks)}",
            env=env or {},
        )
        self.stacks.append(stack)
        return stack

    def stop_all(self) -> None:
        for stack in self.stacks:
            stack.stop(timeout=10)
            # Belt and braces: anything still alive after a graceful stop is killed by PID.
            for service in stack.services.values():
                if service.running():
                    with contextlib.suppress(Exception):
                        service.stop(timeout=5, sig=signal.SIGKILL)


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[StackStarter]:
    """`start_stack(env=..., names=...)` starts real services on free ports; all stop after."""
    starter = StackStarter(tmp_path)
    try:
        yield starter
    finally:
        starter.stop_all()


@pytest.fixture(scope="module")
def module_stack_starter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackStarter]:
    starter = StackStarter(tmp_path_factory.mktemp("stack"))
    try:
        yield starter
    finally:
        starter.stop_all()


@pytest.fixture(scope="session")
def model_card() -> dict[str, Any]:
    card: dict[str, Any] = json.loads((bundled_model_dir() / "model-card.json").read_text())
    return card


@pytest.fixture(scope="session")
def heldout_dir() -> Path:
    return bundled_model_dir() / "heldout"


@pytest.fixture
def service_log() -> Callable[[LocalStack, str], str]:
    """The whole log of one service of a stack, for assertions and failure messages."""

    def read(stack: LocalStack, name: str) -> str:
        try:
            return stack.services[name].log_path.read_text(errors="replace")
        except OSError:
            return ""

    return read
