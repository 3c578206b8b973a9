"""Wire a service's app for observation: HTTP metrics, /metrics, readiness gauge, errors."""

from __future__ import annotations

from fastapi import FastAPI

from servescope.telemetry.errors import install_error_handlers
from servescope.telemetry.health import Health, add_health_routes
from servescope.telemetry.http_metrics import HTTPMetricsMiddleware
from servescope.telemetry.metrics import ServiceMetrics, add_metrics_route


def instrument_app(app: FastAPI, metrics: ServiceMetrics, health: Health) -> None:
    app.state.metrics = metrics  # for tests and in-process tools
    install_error_handlers(app, metrics)
    add_health_routes(app, health)
    add_metrics_route(app, metrics)
    metrics.gauge("servescope_ready").set_function(lambda: 1.0 if health.ready else 0.0)
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics)
