"""One managed process: how local mode starts, waits for, watches and stops anything it runs.

Every process local mode starts (the services, Prometheus, Alertmanager, the responder) is a
`ManagedProcess`: a command, a port on 127.0.0.1, a log file, a readiness URL. Subclasses say
only what differs: the command line, the files to write first, the readiness path.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class LocalStackError(RuntimeError):
    """Something stops local mode from starting; the message says what to do."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our URLs)
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], name: str, log: Path, timeout: float
) -> None:
    """Poll `url` until it answers 200; fail at once if the process dies, or at `timeout`."""
    deadline = time.monotonic() + timeout
    while http_get(url, timeout=0.5)[0] != 200:
        if process.poll() is not None:
            raise LocalStackError(f"{name} exited (code {process.returncode}); see {log}")
        if time.monotonic() > deadline:
            raise LocalStackError(f"{name} not ready after {timeout:.0f} s; see {log}")
        time.sleep(0.05)


def stop_process(
    process: subprocess.Popen[bytes] | None, timeout: float = 15.0, sig: int = signal.SIGTERM
) -> int | None:
    """Signal a process we started, by its PID, and wait; SIGKILL if it overstays `timeout`."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class ManagedProcess:
    """A process on one port of 127.0.0.1 with a log file and a readiness URL."""

    ready_path = "/readyz"

    def __init__(
        self, name: str, port: int, run_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.port = port
        self.run_dir = run_dir
        self.env = env  # None: inherit this process's environment
        self.process: subprocess.Popen[bytes] | None = None
        # A cgroup (servescope.cli.local.cgroups.Cgroup) the process starts inside, if any.
        self.cgroup: Any = None

    # --- what subclasses say --------------------------------------------------------------

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write what the process needs before it starts (configuration files)."""

    # --- the shared behaviour -------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self) -> None:
        """Start without waiting; LocalStackError when the port is taken."""
        if self.running():
            return
        if not port_is_free(self.port):
            raise LocalStackError(
                f"port {self.port} for {self.name} is taken; stop what uses it "
                f"(`ss -ltnp 'sport = :{self.port}'` shows it) or pick another port"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        command = self.command()
        if self.cgroup is not None:
            command = self.cgroup.wrap(command)
        with self.log_path.open("ab") as log:
            # A session of its own: Ctrl-C in the terminal reaches only whoever started it,
            # which then stops its processes in order instead of watching them all die at once.
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the readiness URL answers 200; LocalStackError if it dies or time runs out."""
        if self.process is None:
            raise LocalStackError(f"{self.name} was never started")
        wait_until_ready(
            self.url + self.ready_path, self.process, self.name, self.log_path, timeout
        )

    def start(self, timeout: float = 30.0) -> None:
        """Launch, wait until ready, and stop again if it never gets there."""
        self.launch()
        try:
            self.wait_ready(timeout)
        except LocalStackError:
            self.stop()
            raise

    def exit_code(self) -> int | str:
        return self.process.returncode if self.process else "?"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def send_signal(self, sig: int) -> None:
        if self.running() and self.process is not None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        return stop_process(self.process, timeout, sig)
