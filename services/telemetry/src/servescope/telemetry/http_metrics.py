"""HTTP server metrics after the OpenTelemetry semantic conventions, as ASGI middleware.

Pure ASGI (not BaseHTTPMiddleware, which costs a task per request). The route label is the
matched route template, never the raw path, and every unmatched path shares one value, so
a scan of random URLs cannot grow the series count. An incoming W3C `traceparent` becomes
the current trace context, so exemplars and downstream calls carry the caller's trace id.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servescope.telemetry.metrics import ServiceMetrics, current_exemplar

_PROPAGATOR = TraceContextTextMapPropagator()


class HTTPMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.duration = metrics.histogram("http_server_request_duration_seconds")
        self.active = metrics.gauge("http_server_active_requests")
        self.request_size = metrics.histogram("http_server_request_body_size_bytes")
        self.response_size = metrics.histogram("http_server_response_body_size_bytes")
        self.unmatched = metrics.contract.unmatched_route
        self.methods = frozenset(metrics.contract.label_rules["http_request_method"].values)
        # Children bound once per label combination instead of looked up on every request.
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering
        request_bytes = 0
        response_bytes = 0

        async def counting_receive() -> Message:
            nonlocal request_bytes
            message = await receive()
            if message["type"] == "http.request":
                request_bytes += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, response_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                response_bytes += len(message.get("body", b""))
            await send(message)

        token = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                carrier = {"traceparent": value.decode("latin-1")}
                token = otel_context.attach(_PROPAGATOR.extract(carrier))
                break
        self.active.inc()
        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            self.active.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or self.unmatched
            method = scope["method"] if scope["method"] in self.methods else "_OTHER"
            elapsed = time.perf_counter() - started
            exemplar = current_exemplar()
            child = self._child(self.duration, template, method, str(status))
            if exemplar is None:
                child.observe(elapsed)
            else:
                child.observe(elapsed, exemplar)
            self._child(self.request_size, template, method).observe(request_bytes)
            self._child(self.response_size, template, method).observe(response_bytes)
            if token is not None:
                otel_context.detach(token)
