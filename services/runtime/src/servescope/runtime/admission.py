"""Admission: what a service refuses before it does any work for a request.

* Headers past MAX_HEADER_BYTES in all: 431 (the HTTP parser uvicorn uses sets no bound, and
  a megabyte of headers was served), counted as a rejected input.
* Load shedding: past `limit` requests in flight, 503 with Retry-After at once, instead of
  waiting in an unbounded queue where every request gets slower and memory grows; the
  requests accepted stay as fast as the service can be, and callers (or a load balancer)
  retry elsewhere or later. Probes, /metrics and admin routes are never shed: a busy service
  must still say so.

One pure ASGI layer for both, so a request pays for one.
"""

from __future__ import annotations

import orjson
from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from servescope.telemetry.pipeline import PIPELINE

RETRY_AFTER_SECONDS = 1
# nginx's default (4 buffers of 8 KiB) is of this order; browsers' cookies stay well below.
MAX_HEADER_BYTES = 32 * 1024


def _error(message: str, kind: str) -> bytes:
    return orjson.dumps({"error": message, "kind": kind})


_SHED = _error("the service is at its limit of requests in flight; retry shortly", "overloaded")
_HEADERS = _error(
    f"the request's headers are over {MAX_HEADER_BYTES} bytes in all", "headers_too_large"
)


class Admission:
    """Pure ASGI middleware: refuse oversized headers, and shed load past `limit` in flight
    (0: no limit)."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        shed: Counter | None = None,
        rejected: Counter | None = None,
    ) -> None:
        self.app = app
        self.limit = limit
        self.shed = shed
        self.rejected = rejected
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            if self.rejected is not None:
                self.rejected.labels("headers_too_large").inc()
            await _answer(send, 431, _HEADERS)
            return
        if not self.limit or PIPELINE.is_probe(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            if self.shed is not None:
                self.shed.inc()
            await _answer(send, 503, _SHED, retry_after=True)
            return
        # One event loop: no lock is needed between the check and the increment.
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _answer(send: Send, status: int, body: bytes, retry_after: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
