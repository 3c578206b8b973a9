"""Fault injection for the labs and drills: every failure a learner diagnoses, on demand.

Off by default. The kinds, their spec grammar and their bounds are declared in
servescope.telemetry.faultspec; this module makes them happen:

* step kinds act inside a pipeline step, where the service calls `await faults.inject(step)`:
  `delay` (asyncio sleep: a slow dependency, the server stays responsive), `error` (a share
  of requests fail with 500, kind `fault_injected`, stage of the step), `cpu` (burn CPU
  time on the event loop: a CPU-bound step), `leak` (keep bytes on the heap: resident memory
  grows) and `cache` (append to a file on tmpfs: page cache and shared memory grow while
  resident memory does not; on a memory-limited cgroup tmpfs pages cannot be reclaimed, so
  this is what ends in an OOM kill under a quiet RSS graph);
* `leak` and `cache` without a step act once, when switched on;
* service-wide kinds: `crash` (exit 1 after N requests; probes, scrapes and admin calls do
  not count), `unready` (/readyz 503 with `fault_unready`, /healthz stays 200) and
  `slow_start` (readiness waits SECONDS longer after start; at start only, so from the
  environment only: a running process has already started).

Switched on at start by SERVESCOPE_FAULTS ("delay:resize:0.5,error:infer:0.2"; the older
SERVESCOPE_FAULT_STAGE with SERVESCOPE_FAULT_DELAY_SECONDS still means one delay) or, only
when SERVESCOPE_ADMIN_TOKEN is set, at run time through /admin/faults with that token as a
bearer token. Each fault shows in servescope_fault_value{kind,service,step} (its value,
0 = off; step is empty for service-wide faults) and every time one acts in
servescope_fault_injections_total{kind,step}.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from servescope.runtime.auth import BearerToken
from servescope.runtime.errors import ServiceError, error_response
from servescope.runtime.health import Health
from servescope.runtime.responses import JSONResponse
from servescope.telemetry.faultspec import (
    CACHE_FILE_PREFIX,
    KINDS,
    SERVICE_KINDS,
    STEP_KINDS,
    FaultSpec,
    FaultSpecError,
    cache_file_name,
    make,
    usage,
)
from servescope.telemetry.metrics import ServiceMetrics
from servescope.telemetry.pipeline import PIPELINE

MAX_DELAY_SECONDS = KINDS["delay"].high
CRASH_EXIT_CODE = 1
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024  # leak and cache each stop growing here (safety)
_CHUNK = 1024 * 1024
UNREADY_CONDITION = "fault_unready"

log = structlog.get_logger("servescope.faults")


def default_cache_dir() -> Path:
    """The shared-memory tmpfs (/dev/shm) when present and writable, else the temp dir."""
    shm = Path("/dev/shm")  # noqa: S108  # nosec B108 - tmpfs on purpose: unreclaimable pages
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


class Faults:
    """The faults switched on in one service, and the code that makes them happen."""

    def __init__(
        self,
        steps: tuple[str, ...],
        metrics: ServiceMetrics | None = None,
        *,
        service: str = "",
        health: Health | None = None,
        cache_dir: Path | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.steps = steps
        self.service = service or (metrics.service if metrics else "")
        self.health = health
        self.cache_dir = cache_dir or default_cache_dir()
        self.max_bytes = max_bytes
        self.active: dict[tuple[str, str], FaultSpec] = {}
        self.requests = 0  # counted toward `crash` while it is on
        self._leaked: list[bytes] = []
        self._leaked_bytes = 0
        self._cache_fd: int | None = None
        self._cache_bytes = 0
        self._gauge = metrics.gauge("servescope_fault_value") if metrics else None
        self._counter = metrics.counter("servescope_fault_injections_total") if metrics else None
        self._random = random.Random()  # nosec B311 - which requests a fault hits
        if self._gauge is not None:
            for kind in STEP_KINDS:
                for step in steps:
                    self._gauge.labels(kind, self.service, step).set(0)
            for kind in (*SERVICE_KINDS, "leak", "cache"):
                self._gauge.labels(kind, self.service, "").set(0)
        self._remove_stale_cache_files()

    # --- switching -------------------------------------------------------------------

    @property
    def slow_start_seconds(self) -> float:
        """The slow_start fault's delay (0 when off), for a service that loads something."""
        spec = self.active.get(("slow_start", ""))
        return spec.value if spec is not None else 0.0

    @property
    def delays(self) -> dict[str, float]:
        """Steps with a delay (the admin API's older answer)."""
        return {s.step: s.value for (kind, _), s in self.active.items() if kind == "delay"}

    def specs(self) -> list[FaultSpec]:
        return list(self.active.values())

    def make(self, kind: str, step: str | None, value: float | str | None) -> FaultSpec:
        return make(kind, step, value, self.steps)

    def enable(self, spec: FaultSpec, *, at_start: bool = False) -> None:
        kind = KINDS[spec.kind]
        if not kind.runtime and not at_start:
            raise FaultSpecError(
                f"{spec.kind} acts at start only: set it in SERVESCOPE_FAULTS and restart"
            )
        if spec.step and spec.step not in self.steps:
            raise FaultSpecError(f"unknown step {spec.step!r}; {usage(self.steps)}")
        self.active[(spec.kind, spec.step)] = spec
        if spec.kind == "unready" and self.health is not None:
            self.health.set(UNREADY_CONDITION, False)
        elif spec.kind == "slow_start" and self.health is not None:
            self.health.not_before = time.monotonic() + spec.value
        elif spec.kind == "crash":
            self.requests = 0
        elif spec.kind == "leak" and not spec.step:
            self._leak(int(spec.value))
        elif spec.kind == "cache" and not spec.step:
            self._cache(int(spec.value))
        self._show(spec.kind, spec.step, spec.value)
        log.warning("fault_set", fault=str(spec), step=spec.step or None)

    def disable(self, kind: str | None = None, step: str | None = None) -> list[FaultSpec]:
        """Clears the faults matching `kind` and `step` (None: any); returns them."""
        gone = [
            s
            for s in self.active.values()
            if (kind is None or s.kind == kind) and (step is None or s.step == step)
        ]
        for spec in gone:
            del self.active[(spec.kind, spec.step)]
            self._show(spec.kind, spec.step, 0)
            if spec.kind == "unready" and self.health is not None:
                self.health.conditions.pop(UNREADY_CONDITION, None)
            elif spec.kind == "slow_start" and self.health is not None:
                self.health.not_before = 0.0
        kinds = {s.kind for s in self.active.values()}
        if "leak" not in kinds:
            self._leaked.clear()
            self._leaked_bytes = 0
        if "cache" not in kinds:
            self._drop_cache()
        if gone:
            log.warning("fault_cleared", faults=[str(s) for s in gone])
        return gone

    def set(self, step: str, seconds: float) -> None:
        """A delay in one step; 0 clears it (the first API, kept for callers of it)."""
        if step not in self.steps:
            raise ValueError(f"unknown step {step!r}; this service has: {', '.join(self.steps)}")
        if seconds:
            self.enable(self.make("delay", step, seconds))
        else:
            self.disable("delay", step)

    def _show(self, kind: str, step: str, value: float) -> None:
        if self._gauge is not None:
            self._gauge.labels(kind, self.service, step).set(value)

    def _count(self, kind: str, step: str) -> None:
        if self._counter is not None:
            self._counter.labels(kind, step).inc()

    # --- acting ------------------------------------------------------------------------

    async def inject(self, step: str) -> None:
        """Called by the service inside each fault step; a no-op when nothing is on."""
        if not self.active:
            return
        active = self.active
        if (spec := active.get(("leak", step))) is not None:
            self._leak(int(spec.value))
            self._count("leak", step)
        if (spec := active.get(("cache", step))) is not None:
            self._cache(int(spec.value))
            self._count("cache", step)
        if (spec := active.get(("cpu", step))) is not None:
            _burn(spec.value)
            self._count("cpu", step)
        if (spec := active.get(("delay", step))) is not None:
            self._count("delay", step)
            await asyncio.sleep(spec.value)
        if (spec := active.get(("error", step))) is not None and (
            spec.value >= 1 or self._random.random() < spec.value
        ):
            self._count("error", step)
            raise ServiceError(
                500, "fault_injected", f"injected error in step {step}", stage=_stage_of(step)
            )

    def request_done(self) -> None:
        """One request served (not a probe, scrape or admin call): counts toward `crash`."""
        spec = self.active.get(("crash", ""))
        if spec is None:
            return
        self.requests += 1
        if self.requests >= spec.value:
            self._count("crash", "")
            log.error("fault_crash", requests=self.requests, exit_code=CRASH_EXIT_CODE)
            # Let the answer leave first; then die the way a crash does (no clean shutdown).
            asyncio.get_running_loop().call_later(0.05, os._exit, CRASH_EXIT_CODE)

    def _leak(self, size: int) -> None:
        size = min(size, self.max_bytes - self._leaked_bytes)
        if size <= 0:
            return
        # Filled, not zeroed: a zeroed allocation may stay unbacked and never show in RSS.
        self._leaked.append(b"\xa5" * size)
        self._leaked_bytes += size

    def _cache(self, size: int) -> None:
        size = min(size, self.max_bytes - self._cache_bytes)
        if size <= 0:
            return
        try:
            if self._cache_fd is None:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                path = self.cache_path
                self._cache_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                atexit.register(self._drop_cache)  # a clean exit leaves no tmpfs file behind
            chunk = b"\x5a" * min(size, _CHUNK)
            left = size
            while left > 0:
                written = os.write(self._cache_fd, chunk[:left])
                left -= written
                self._cache_bytes += written
        except OSError as exc:  # ENOSPC on a full tmpfs: the fault stops growing
            log.warning("fault_cache_write_failed", error=str(exc))

    @property
    def cache_path(self) -> Path:
        return self.cache_dir / cache_file_name(self.service or "service", os.getpid())

    def _drop_cache(self) -> None:
        if self._cache_fd is not None:
            os.close(self._cache_fd)
            self._cache_fd = None
        self._cache_bytes = 0
        self.cache_path.unlink(missing_ok=True)

    def _remove_stale_cache_files(self) -> None:
        """tmpfs pages outlive a killed process and stay charged to its cgroup: a restarted
        service removes the files of its dead predecessors, or it would start out of memory."""
        prefix = f"{CACHE_FILE_PREFIX}{self.service or 'service'}-"
        try:
            candidates = list(self.cache_dir.glob(f"{prefix}*"))
        except OSError:
            return
        for path in candidates:
            pid = path.name.removeprefix(prefix)
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                path.unlink(missing_ok=True)

    def close(self) -> None:
        self._drop_cache()

    def describe(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "steps": list(self.steps),
            "kinds": {
                name: {
                    "usage": k.usage,
                    "step": k.step,
                    "unit": k.unit,
                    "bounds": k.bounds(),
                    "at_run_time": k.runtime,
                    "meaning": k.meaning,
                }
                for name, k in KINDS.items()
            },
            "faults": [
                {"kind": s.kind, "step": s.step or None, "value": s.value, "spec": str(s)}
                for s in self.active.values()
            ],
            "delays": self.delays,
        }


def _burn(seconds: float) -> None:
    """Spend this much CPU time of this thread (not wall time: a busy machine takes longer)."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        for i in range(2000):
            x ^= i * i


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stage_of(step: str) -> str | None:
    try:
        return PIPELINE.step_stage[step]
    except (KeyError, TypeError):
        return None


class CountRequests:
    """Counts served requests for the `crash` fault (pure ASGI, nearly free when off)."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if (
            scope["type"] == "http"
            and ("crash", "") in self.faults.active
            and not PIPELINE.is_probe(scope.get("path", ""))
        ):
            self.faults.request_done()


def add_admin_routes(app: FastAPI, faults: Faults, token: str | None) -> None:
    """The admin endpoints, registered only when a token is configured (secure default).

    GET    /admin/faults          what is on, the steps and the kinds with their bounds
    PUT    /admin/faults          {"kind": "error", "step": "infer", "value": 0.2}
                                  (or {"spec": "error:infer:0.2"}): switch one on
    DELETE /admin/faults          clear all (?kind=...&step=... narrows it)
    PUT    /admin/faults/{step}   {"delay_seconds": 0.5}, or {"kind": ..., "value": ...}
    DELETE /admin/faults/{step}   clear every fault in that step (?kind=... narrows it)

    Bad requests get 400 (404 for an unknown step in the path) with the valid specs.
    """
    if not token:
        return
    authorise = BearerToken(token, "admin endpoints").check

    def invalid(message: str, status: int = 400) -> Response:
        # Answered here, not raised: an operator's typo is not a rejected input.
        return error_response(ServiceError(status, "invalid_fault", message))

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise FaultSpecError("the body is not JSON") from None
        if not isinstance(body, dict):
            raise FaultSpecError("the body must be a JSON object")
        return body

    def spec_from(body: dict[str, Any], step: str | None) -> FaultSpec:
        if "spec" in body:
            from servescope.telemetry.faultspec import parse

            spec = parse(str(body["spec"]), faults.steps)
            if step is not None and spec.step != step:
                raise FaultSpecError(f"the spec's step is not {step!r}")
            return spec
        if "delay_seconds" in body and "kind" not in body:
            value = body["delay_seconds"]
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise FaultSpecError("delay_seconds must be a number")
            return faults.make("delay", step or body.get("step"), value)
        if "kind" not in body:
            raise FaultSpecError(
                'send {"kind": KIND, "step": STEP, "value": VALUE} or {"spec": "KIND[:STEP]'
                '[:VALUE]"}; ' + usage(faults.steps)
            )
        value = body.get("value")
        if value is not None and not isinstance(value, int | float | str):
            raise FaultSpecError("value must be a number or a string such as 64Mi")
        return faults.make(str(body["kind"]), step or body.get("step"), value)

    @app.get("/admin/faults", include_in_schema=False)
    async def list_faults(request: Request) -> Response:
        authorise(request)
        return JSONResponse(faults.describe())

    @app.put("/admin/faults", include_in_schema=False)
    async def set_fault(request: Request) -> Response:
        authorise(request)
        try:
            faults.enable(spec_from(await body_of(request), None))
        except FaultSpecError as exc:
            return invalid(str(exc))
        return JSONResponse(faults.describe())

    @app.delete("/admin/faults", include_in_schema=False)
    async def clear_faults(
        request: Request, kind: str | None = None, step: str | None = None
    ) -> Response:
        authorise(request)
        if kind is not None and kind not in KINDS:
            return invalid(f"unknown fault kind {kind!r}; {usage(faults.steps)}")
        if step is not None and step not in faults.steps:
            return invalid(f"unknown step {step!r}; {usage(faults.steps)}")
        faults.disable(kind, step)
        return JSONResponse(faults.describe())

    @app.put("/admin/faults/{step}", include_in_schema=False)
    async def set_step_fault(step: str, request: Request) -> Response:
        authorise(request)
        if step not in faults.steps:
            return invalid(f"unknown step {step!r}; {usage(faults.steps)}", 404)
        try:
            body = await body_of(request)
            if body.get("delay_seconds") == 0 and "kind" not in body:
                faults.disable("delay", step)  # the first API: 0 switches the delay off
            else:
                faults.enable(spec_from(body, step))
        except FaultSpecError as exc:
            return invalid(str(exc))
        return JSONResponse(faults.describe())

    @app.delete("/admin/faults/{step}", include_in_schema=False)
    async def clear_step_faults(step: str, request: Request, kind: str | None = None) -> Response:
        authorise(request)
        if step not in faults.steps:
            return invalid(f"unknown step {step!r}; {usage(faults.steps)}", 404)
        if kind is not None and kind not in KINDS:
            return invalid(f"unknown fault kind {kind!r}; {usage(faults.steps)}")
        faults.disable(kind, step)
        return JSONResponse(faults.describe())
