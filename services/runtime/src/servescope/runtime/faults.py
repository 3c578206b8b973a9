"""Fault injection for the labs: an extra delay in one named step of a service.

Off by default. Turned on by environment (SERVESCOPE_FAULT_STAGE and
SERVESCOPE_FAULT_DELAY_SECONDS) or, only when SERVESCOPE_ADMIN_TOKEN is set, at run time
through /admin/faults with that token as a bearer token. The delay is an asyncio sleep, so
it stands in for a slow dependency (a feature-store look-up) without blocking the server.
"""

from __future__ import annotations

import asyncio
import hmac

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from servescope.runtime.errors import ServiceError
from servescope.runtime.responses import JSONResponse
from servescope.telemetry.metrics import ServiceMetrics

MAX_DELAY_SECONDS = 30.0


class Faults:
    def __init__(self, steps: tuple[str, ...], metrics: ServiceMetrics | None = None) -> None:
        self.steps = steps
        self.delays: dict[str, float] = {}
        self._gauge = metrics.gauge("servescope_fault_delay_seconds") if metrics else None
        if self._gauge is not None:
            for step in steps:
                self._gauge.labels(step).set(0)

    def set(self, step: str, seconds: float) -> None:
        if step not in self.steps:
            raise ValueError(f"unknown step {step!r}; this service has: {', '.join(self.steps)}")
        if not 0 <= seconds <= MAX_DELAY_SECONDS:
            raise ValueError(f"delay must be between 0 and {MAX_DELAY_SECONDS} seconds")
        if seconds:
            self.delays[step] = seconds
        else:
            self.delays.pop(step, None)
        if self._gauge is not None:
            self._gauge.labels(step).set(seconds)
        structlog.get_logger().warning("fault_delay_set", step=step, delay_seconds=seconds)

    async def inject(self, step: str) -> None:
        delay = self.delays.get(step)
        if delay:
            await asyncio.sleep(delay)


class DelayRequest(BaseModel):
    delay_seconds: float = Field(ge=0, le=MAX_DELAY_SECONDS)


def add_admin_routes(app: FastAPI, faults: Faults, token: str | None) -> None:
    """The admin endpoints, registered only when a token is configured (secure default)."""
    if not token:
        return
    expected = f"Bearer {token}".encode()

    def authorise(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise ServiceError(401, "unauthorized", "admin endpoints need the admin bearer token")

    @app.get("/admin/faults", include_in_schema=False)
    async def list_faults(request: Request) -> Response:
        authorise(request)
        return JSONResponse({"steps": list(faults.steps), "delays": faults.delays})

    @app.put("/admin/faults/{step}", include_in_schema=False)
    async def set_fault(step: str, body: DelayRequest, request: Request) -> Response:
        authorise(request)
        try:
            faults.set(step, body.delay_seconds)
        except ValueError as exc:
            raise ServiceError(404, "not_found", str(exc)) from exc
        return JSONResponse({"steps": list(faults.steps), "delays": faults.delays})

    @app.delete("/admin/faults/{step}", include_in_schema=False)
    async def clear_fault(step: str, request: Request) -> Response:
        authorise(request)
        try:
            faults.set(step, 0)
        except ValueError as exc:
            raise ServiceError(404, "not_found", str(exc)) from exc
        return JSONResponse({"steps": list(faults.steps), "delays": faults.delays})
