"""What a checker (and a reference solve.py, and a setup.py) is handed: `CheckContext`.

A checker grades real state and reports every criterion, passed or not:

    def check(ctx: CheckContext) -> None:
        status = ctx.http_get(ctx.urls["preprocess"] + "/readyz").status
        ctx.require(status == 200, "the edge is ready (/readyz answers 200)",
                    "curl it: what does it say it is waiting for?")

`require` returns the condition, so a checker can stop when later criteria depend on an
earlier one. Checkers never read the lab's solution/ folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from servescope.cli.labs.model import Lab, LabError
from servescope.cli.labs.processes import admin, http, prometheus_query, python_path

T = TypeVar("T")


class QueryError(LabError):
    """Prometheus refused or could not run a query; the message is Prometheus's."""


class MissingTool(LabError):
    """A binary the checker needs is not installed; the message says how to get it."""


INSTALL_HINTS = {
    "promtool": "sudo apt-get install prometheus (promtool comes with it)",
    "luajit": "sudo apt-get install luajit",
    "prometheus": "sudo apt-get install prometheus",
    "amtool": "sudo apt-get install prometheus-alertmanager",
}


@dataclass(frozen=True)
class Sample:
    """One element of an instant query's answer."""

    labels: dict[str, str]
    value: float
    timestamp: float

    @property
    def metric(self) -> dict[str, str]:
        return self.labels


@dataclass(frozen=True)
class Response:
    status: int  # 0 when nothing answered
    body: bytes
    url: str

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Criterion:
    name: str
    ok: bool
    hint: str = ""


@dataclass
class CheckContext:
    lab: Lab
    root: Path  # the repository the lab runs against
    workspace: Path  # labs/<stage>/<nn>-<name>/work
    run_dir: Path  # .run: logs, traces, the admin token
    urls: dict[str, str]  # service -> base URL, "prometheus", "alertmanager" while running
    trace_dir: Path
    log_dir: Path
    answer: str | None = None  # the learner's last `servescope lab answer`
    state: dict[str, Any] = field(default_factory=dict)  # the lab's private run state
    started_at: float | None = None  # when the running stack started (epoch seconds)
    results: list[Criterion] = field(default_factory=list)
    on_restart: Callable[[], None] | None = None
    on_answer: Callable[[str], None] | None = None
    on_save_state: Callable[[dict[str, Any]], None] | None = None

    # --- reporting ------------------------------------------------------------------------

    def require(self, condition: object, criterion: str, hint: str = "") -> bool:
        ok = bool(condition)
        self.results.append(Criterion(criterion, ok, "" if ok else hint))
        return ok

    def fail(self, criterion: str, hint: str = "") -> None:
        self.results.append(Criterion(criterion, False, hint))

    def ok(self, criterion: str) -> None:
        self.results.append(Criterion(criterion, True))

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(c.ok for c in self.results)

    @property
    def failures(self) -> list[Criterion]:
        return [c for c in self.results if not c.ok]

    # --- Prometheus -----------------------------------------------------------------------

    @property
    def prometheus(self) -> str:
        url = self.urls.get("prometheus")
        if not url:
            raise LabError(
                f"Prometheus is not running for this lab: `servescope lab start {self.lab.id}`"
            )
        return url

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """An instant query against the lab's Prometheus (at `at`, epoch seconds, or now)."""
        answer = prometheus_query(self.prometheus, promql, at)
        if answer.get("status") != "success":
            raise QueryError(str(answer.get("error") or answer))
        data = answer["data"]
        if data["resultType"] == "scalar":
            ts, value = data["result"]
            return [Sample({}, float(value), float(ts))]
        if data["resultType"] != "vector":
            raise QueryError(
                f"the query returns a {data['resultType']}, not an instant vector: a range "
                "selector like [1m] belongs inside a function such as rate()"
            )
        return [
            Sample(dict(item["metric"]), float(item["value"][1]), float(item["value"][0]))
            for item in data["result"]
        ]

    def exemplars(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        """Prometheus's /api/v1/query_exemplars: [{seriesLabels, exemplars: [{labels,
        value, timestamp}]}]."""
        params = urllib.parse.urlencode({"query": promql, "start": start, "end": end})
        status, raw = http("GET", f"{self.prometheus}/api/v1/query_exemplars?{params}")
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise QueryError(f"HTTP {status} from Prometheus") from exc
        if answer.get("status") != "success":
            raise QueryError(str(answer.get("error")))
        data: list[dict[str, Any]] = answer.get("data") or []
        return data

    # --- tools ----------------------------------------------------------------------------

    def _tool(self, name: str) -> str:
        found = shutil.which(name)
        if found is None:
            raise MissingTool(
                f"{name} is not installed: {INSTALL_HINTS.get(name, f'install {name}')}"
            )
        return found

    def promtool(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """Run promtool (from Debian's prometheus package) in the workspace."""
        return subprocess.run(
            [self._tool("promtool"), *map(str, args)],
            cwd=self.workspace,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def luajit(
        self, script_path: str | Path, *args: str | Path
    ) -> subprocess.CompletedProcess[str]:
        """Run a Lua script under the `luajit` binary, in the workspace."""
        return subprocess.run(
            [self._tool("luajit"), str(script_path), *map(str, args)],
            cwd=self.workspace,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def python(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Python with the lab repository's code first on the path, run from its root (how a
        checker runs the repository's own generators against a copy)."""
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.root,
            env={**_environ(), "PYTHONPATH": python_path(self.root)},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def servescope(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The `servescope` command of the lab's repository, run from its root."""
        return self.python("-m", "servescope.cli", *args)

    # --- HTTP -----------------------------------------------------------------------------

    def http_get(self, url: str, timeout: float = 5.0) -> Response:
        status, body = http("GET", url, timeout=timeout)
        return Response(status, body, url)

    def http_post(
        self,
        url: str,
        body: bytes | str | dict[str, Any],
        content_type: str = "application/json",
        timeout: float = 5.0,
    ) -> Response:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        raw = data.encode() if isinstance(data, str) else data
        status, answer = http("POST", url, raw, {"Content-Type": content_type}, timeout)
        return Response(status, answer, url)

    def admin(self, service: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A call to a running service's /admin API (faults) with the lab's token."""
        token = (self.run_dir / "admin-token").read_text().strip()
        return admin(self.urls[service], token, method, path, body)

    # --- waiting and acting ---------------------------------------------------------------

    @staticmethod
    def wait_for(probe: Callable[[], T], timeout: float = 5.0, interval: float = 0.25) -> T:
        """Call `probe` until it returns something truthy or `timeout` passes; the last value."""
        deadline = time.monotonic() + timeout
        value = probe()
        while not value and time.monotonic() < deadline:
            time.sleep(interval)
            value = probe()
        return value

    def restart(self) -> None:
        """Restart the lab's services with the current workspace (solve.py, setup.py)."""
        if self.on_restart is None:
            raise LabError("restart is not available here")
        self.on_restart()

    def record_answer(self, text: str) -> None:
        """Record an answer as `servescope lab answer` does (solve.py)."""
        self.answer = text
        if self.on_answer is not None:
            self.on_answer(text)

    def save_state(self) -> None:
        """Persist ctx.state under .run/labs/state/ (setup.py: what start chose)."""
        if self.on_save_state is not None:
            self.on_save_state(self.state)


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)
