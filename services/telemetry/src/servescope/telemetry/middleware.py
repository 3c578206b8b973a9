"""The HTTP server's telemetry, as one pure-ASGI middleware: metrics, server span, access log.

Pure ASGI (not BaseHTTPMiddleware, which costs a task per request). Metrics follow the
OpenTelemetry HTTP semantic conventions; the route label is the matched route template,
never the raw path, and every unmatched path shares one value, so a scan of random URLs
cannot grow the series count. The server span continues the caller's W3C trace context,
and everything inside the request (exemplars, downstream calls, log lines) carries it.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servescope.telemetry.logging import log_sampler
from servescope.telemetry.metrics import ServiceMetrics
from servescope.telemetry.tracing import UnsampledParents, tracer


class _HeaderGetter(Getter[list[tuple[bytes, bytes]]]):
    """Reads the W3C headers straight from the ASGI scope's header list."""

    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        wanted = key.encode()
        values = [v.decode("latin-1") for k, v in carrier if k == wanted]
        return values or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_GETTER = _HeaderGetter()
# Kubernetes probes and Prometheus scrapes: every few seconds, forever, and never the story.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class HTTPTelemetryMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.duration = metrics.histogram("http_server_request_duration_seconds")
        # Read at scrape time from a plain count: no lock taken twice a request.
        self.in_flight = 0
        metrics.gauge("http_server_active_requests").set_function(lambda: self.in_flight)
        self.request_size = metrics.histogram("http_server_request_body_size_bytes")
        self.response_size = metrics.histogram("http_server_response_body_size_bytes")
        self.unmatched = metrics.contract.unmatched_route
        self.methods = frozenset(metrics.contract.label_rules["http_request_method"].values)
        self.tracer = tracer()
        self.unsampled = UnsampledParents.for_current_provider()
        self.log = structlog.get_logger("servescope.access")
        self.sampler = log_sampler()
        # The three histograms' children, bound once per (route, method, status) and found
        # with one lookup a request.
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def _bind(self, template: str, method: str, status: int) -> tuple[Any, Any, Any]:
        children = self._children[(template, method, status)] = (
            self.duration.labels(template, method, str(status)),
            self.request_size.labels(template, method),
            self.response_size.labels(template, method),
        )
        return children

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

        method = scope["method"] if scope["method"] in self.methods else "_OTHER"
        if scope["path"] in QUIET_PATHS:
            # Probes and scrapes: measured, but no span and no access log line each time.
            self.in_flight += 1
            try:
                await self.app(scope, counting_receive, counting_send)
            finally:
                self.in_flight -= 1
                self._observe(
                    trace.INVALID_SPAN,
                    self._template(scope),
                    method,
                    status,
                    time.perf_counter() - started,
                    request_bytes,
                    response_bytes,
                )
            return
        span = self.unsampled.span(scope["headers"])
        if span is None:
            parent = propagate.extract(scope["headers"], getter=_GETTER)
            span = self.tracer.start_span(
                method,  # renamed to "METHOD /route" once the route is known
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": scope["path"]},
            )
            token = otel_context.attach(trace.set_span_in_context(span, parent))
        else:
            token = otel_context.attach(trace.set_span_in_context(span))
        self.in_flight += 1
        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            self.in_flight -= 1
            elapsed = time.perf_counter() - started
            template = self._template(scope)
            self._observe(span, template, method, status, elapsed, request_bytes, response_bytes)
            context = span.get_span_context()
            sampler = self.sampler
            if (
                sampler is not None
                and context.is_valid
                and not sampler.keeps_info(context.trace_id)
            ):
                sampler.count("info", "dropped")  # the same decision, without building the line
            else:
                self.log.info(
                    "http_request",
                    http_route=template,
                    http_request_method=method,
                    http_response_status_code=status,
                    duration_ms=round(elapsed * 1000, 3),
                )
            otel_context.detach(token)
            span.end()

    def _template(self, scope: Scope) -> str:
        """The matched route's template, or the one shared value for unmatched paths."""
        return getattr(scope.get("route"), "path", None) or self.unmatched

    def _observe(
        self,
        span: trace.Span,
        template: str,
        method: str,
        status: int,
        elapsed: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        context = span.get_span_context()
        children = self._children.get((template, method, status)) or self._bind(
            template, method, status
        )
        duration, request_size, response_size = children
        if context.trace_flags.sampled:
            duration.observe(
                elapsed,
                {
                    "trace_id": format(context.trace_id, "032x"),
                    "span_id": format(context.span_id, "016x"),
                },
            )
        else:
            duration.observe(elapsed)
        request_size.observe(request_bytes)
        response_size.observe(response_bytes)
        if span.is_recording():
            span.update_name(f"{method} {template}")
            span.set_attributes({"http.route": template, "http.response.status_code": status})
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
