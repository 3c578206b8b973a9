"""Load shedding: a bound on the requests a service works on at once.

Past the bound a request is answered 503 with Retry-After at once, instead of waiting in an
unbounded queue where every request gets slower and memory grows: the requests accepted stay
as fast as the service can be, and callers (or a load balancer) retry elsewhere or later.
Probes, /metrics and admin routes are never shed: a busy service must still say so.
"""

from __future__ import annotations

import orjson
from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from servescope.telemetry.pipeline import PIPELINE

RETRY_AFTER_SECONDS = 1
_BODY = orjson.dumps(
    {
        "error": "the service is at its limit of requests in flight; retry shortly",
        "kind": "overloaded",
    }
)


class ConcurrencyLimit:
    """Pure ASGI middleware: at most `limit` traffic requests in flight (0: no limit)."""

    def __init__(self, app: ASGIApp, limit: int, shed: Counter | None = None) -> None:
        self.app = app
        self.limit = limit
        self.shed = shed
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or PIPELINE.is_probe(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            if self.shed is not None:
                self.shed.inc()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_BODY)).encode()),
                        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _BODY})
            return
        # One event loop: no lock is needed between the check and the increment.
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
