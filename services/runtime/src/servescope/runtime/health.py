"""Liveness and readiness, kept distinct on purpose.

Liveness (`/healthz`) says the process can serve HTTP at all; restarting it is the cure when
it cannot. Readiness (`/readyz`) says it can do its own job right now (model loaded,
metadata fetched, not draining); failing it only takes the pod out of load balancing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi.responses import Response

from servescope.runtime.responses import JSONResponse


@dataclass
class Health:
    """Readiness is the conjunction of named conditions, so /readyz can say what is missing."""

    service: str
    version: str
    conditions: dict[str, bool] = field(default_factory=dict)
    draining: bool = False
    # Set when the service cannot ever become ready (say, the model file is unreadable);
    # the server then exits non-zero instead of idling unready forever.
    fatal: str | None = None
    # The slow_start fault (servescope.runtime.faults): not ready before this monotonic time.
    not_before: float = 0.0

    def require(self, *names: str) -> None:
        for name in names:
            self.conditions.setdefault(name, False)

    def set(self, name: str, value: bool) -> None:
        self.conditions[name] = value

    @property
    def ready(self) -> bool:
        return (
            not self.draining
            and all(self.conditions.values())
            and (not self.not_before or time.monotonic() >= self.not_before)
        )

    def not_ready_reasons(self) -> list[str]:
        reasons = [name for name, ok in self.conditions.items() if not ok]
        if self.not_before and time.monotonic() < self.not_before:
            reasons.append("slow_start")
        if self.draining:
            reasons.append("draining")
        return reasons


def add_health_routes(app: FastAPI, health: Health) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok", "service": health.service})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        if health.ready:
            return JSONResponse({"status": "ready", "service": health.service})
        return JSONResponse(
            {
                "status": "not_ready",
                "service": health.service,
                "waiting_for": health.not_ready_reasons(),
            },
            status_code=503,
        )
