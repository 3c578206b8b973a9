"""One error shape for every service.

The body is `{"error": <message>, "kind": <kind>, "stage": <stage>}`. `error` as a string is
the Open Inference Protocol's own error format, so OIP clients read it unchanged; `kind` is
drawn from a fixed set (it becomes a metric label) and `stage` names where it failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from servescope.runtime.responses import JSONResponse

if TYPE_CHECKING:
    from servescope.telemetry.metrics import ServiceMetrics
from starlette.exceptions import HTTPException as StarletteHTTPException


class ServiceError(Exception):
    """An expected failure with a status code and a bounded `kind`."""

    def __init__(self, status: int, kind: str, message: str, stage: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.stage = stage

    def body(self) -> dict[str, str]:
        body = {"error": self.message, "kind": self.kind}
        if self.stage:
            body["stage"] = self.stage
        return body


_HTTP_KINDS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def error_response(err: ServiceError) -> Response:
    return JSONResponse(err.body(), status_code=err.status)


# Refused requests, counted by reason: bad input, and a missing or wrong bearer token (a
# probe for the admin or webhook endpoints should show). 404/405 are not inputs.
_REJECTION_STATUSES = frozenset({400, 401, 413, 415, 422})


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics | None = None) -> None:
    """Every failure answers in the shared shape, including FastAPI's own 404/405/422.

    With `metrics`, every rejected input is counted in servescope_rejected_inputs_total by
    its kind, which the contract restricts to a fixed set.
    """
    rejected = metrics.counter("servescope_rejected_inputs_total") if metrics else None
    reasons = metrics.contract.label_rules["reason"] if metrics else None

    def count(status: int, kind: str) -> None:
        if rejected is None or reasons is None:
            return
        if status in _REJECTION_STATUSES:
            rejected.labels(kind if reasons.allows(kind) else "invalid_request").inc()
        elif status == 404 and reasons.allows(kind):
            # A request naming a model that is not served (unknown_model) is a refused
            # input; a path no route matches (not_found) is not.
            rejected.labels(kind).inc()

    log = structlog.get_logger("servescope.errors")

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> Response:
        count(exc.status, exc.kind)
        # Our own messages only: they name limits and stages, never the payload.
        if exc.status >= 500:
            log.error("request_failed", kind=exc.kind, stage=exc.stage, error=exc.message)
        else:
            log.warning("request_rejected", kind=exc.kind, stage=exc.stage, error=exc.message)
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        kind = _HTTP_KINDS.get(exc.status_code, "http_error")
        count(exc.status_code, kind)
        # Starlette puts the route's methods in `Allow` on a 405 (RFC 9110 requires it).
        return JSONResponse(
            {"error": str(exc.detail), "kind": kind},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        count(422, "invalid_request")
        return JSONResponse(
            {"error": f"invalid request: {problems}", "kind": "invalid_request"},
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        # Never leak internals (paths, payloads) to clients; the log has the traceback.
        log.exception("unhandled_error", kind="internal", error_type=type(exc).__name__)
        return JSONResponse(
            {"error": "internal error; see the service log", "kind": "internal"},
            status_code=500,
        )
