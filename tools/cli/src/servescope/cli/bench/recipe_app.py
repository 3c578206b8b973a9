"""The recipe a user would copy instead of Servescope's telemetry: the bench's "recipe" apps.

Each service's app is built the way its `__main__` builds it (settings from the environment,
`create_app(settings, health)`), with Servescope's telemetry off, and then given what the
libraries' READMEs say to add:

- metrics: prometheus-fastapi-instrumentator, `Instrumentator().instrument(app).expose(app)`;
- traces: nothing here; `opentelemetry-instrument` (the FastAPI and aiohttp-client
  instrumentations) patches FastAPI and aiohttp before this module is imported;
- logs: structlog writing one JSON access line per request, every request, to stdout.

This module runs only inside the recipe's own environment (installed by
`servescope.cli.bench.recipe`): the workspace has neither the instrumentator nor
OpenTelemetry's instrumentations, so nothing in the CLI imports it. uvicorn loads it with
`--app-dir` and `--factory recipe_app:<service>`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request, Response
from opentelemetry import trace
from prometheus_fastapi_instrumentator import Instrumentator  # type: ignore[import-not-found]

from servescope.runtime.health import Health


def add_trace_ids(
    _: object, __: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """The current span's ids on every line, as Servescope's lines carry them, so a line can
    be found from a trace (OpenTelemetry's usual structlog processor)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


# structlog's own production setup, from its docs' performance page: a filtering bound logger,
# cached loggers, orjson, bytes straight to stdout (the services' logs go to stdout too, which
# the bench sends to a file). Every line is written: no sampling.
structlog.configure(
    cache_logger_on_first_use=True,
    wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    processors=[
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer(serializer=orjson.dumps),
    ],
    logger_factory=structlog.BytesLoggerFactory(),
)


def add_access_log(app: FastAPI) -> None:
    """One access line per request: FastAPI's documented `@app.middleware("http")` timing
    middleware, with the request bound to structlog's context variables.

    Chosen because it is what FastAPI-with-structlog guides show and users copy. It is
    Starlette's BaseHTTPMiddleware, which costs more than the line itself (~0.75 ms of CPU
    per request per service measured here, against ~0.2 ms for the same line from a
    pure-ASGI middleware): the bench doc says so beside the figures.
    """
    log = structlog.get_logger("access")

    @app.middleware("http")
    async def access_log(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(method=request.method, path=request.url.path)
        started = time.perf_counter()
        response = await call_next(request)
        log.info(
            "request",
            status=response.status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return response


def build(
    create_app: Callable[[Any, Health], FastAPI], settings_class: Callable[[], Any]
) -> FastAPI:
    """The service's app as its `__main__` builds it, plus the recipe."""
    settings = settings_class()
    app = create_app(settings, Health(settings.service_name, settings.version))
    # Servescope's /metrics route is mounted even with its telemetry off (the readiness gauge,
    # the shed counter); the first route to match answers, so it makes way for the
    # instrumentator's.
    app.router.routes[:] = [
        route for route in app.router.routes if getattr(route, "path", None) != "/metrics"
    ]
    Instrumentator().instrument(app).expose(app)
    add_access_log(app)
    return app


def preprocess() -> FastAPI:
    from servescope.preprocess.app import create_app
    from servescope.preprocess.settings import Settings

    return build(create_app, Settings)


def classifier() -> FastAPI:
    from servescope.classifier.app import create_app
    from servescope.classifier.settings import Settings

    return build(create_app, Settings)


def postprocess() -> FastAPI:
    from servescope.postprocess.app import create_app
    from servescope.postprocess.settings import Settings

    return build(create_app, Settings)
