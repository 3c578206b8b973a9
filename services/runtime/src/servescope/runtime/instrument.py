"""Wire a service's app for observation: HTTP metrics, /metrics, readiness gauge, errors."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from servescope.runtime.admission import Admission
from servescope.runtime.errors import install_error_handlers
from servescope.runtime.faults import CountRequests, Faults, add_admin_routes
from servescope.runtime.health import Health, add_health_routes
from servescope.runtime.settings import CommonSettings
from servescope.telemetry.faultspec import make, parse_list
from servescope.telemetry.logging import bind_log_metrics
from servescope.telemetry.metrics import ServiceMetrics, add_metrics_route
from servescope.telemetry.middleware import HTTPTelemetryMiddleware
from servescope.telemetry.sinks import bind_loss_metrics

# FastAPI's own OpenTelemetry layer switches itself on whenever opentelemetry is installed.
# Our middleware already makes the server span with the same semantic conventions, plus
# the Prometheus metrics and the access log, in one pass: both together cost ~1.9x ours
# alone per request (measured in-process), so FastAPI's is off in every service.
FASTAPI_TELEMETRY_OFF: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}


def instrument_app(
    app: FastAPI,
    metrics: ServiceMetrics,
    health: Health,
    settings: CommonSettings,
    fault_steps: tuple[str, ...] = (),
) -> Faults:
    """Returns the service's fault switches (set from settings; admin routes if a token)."""
    app.state.metrics = metrics  # for tests and in-process tools
    bind_log_metrics(metrics)
    bind_loss_metrics(metrics)
    faults = Faults(
        fault_steps,
        metrics,
        health=health,
        cache_dir=settings.fault_cache_dir,
        max_bytes=settings.fault_max_bytes,
    )
    # A bad spec stops the start with a message that lists the valid ones (FaultSpecError).
    specs = parse_list(settings.faults, fault_steps)
    if settings.fault_stage and settings.fault_delay_seconds:
        specs.insert(
            0, make("delay", settings.fault_stage, settings.fault_delay_seconds, fault_steps)
        )
    for spec in specs:
        faults.enable(spec, at_start=True)
    app.state.faults = faults
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    # Every request would pay for the crash counter's layer; it is needed only where a crash
    # fault can be on: set at start, or switchable through the admin routes.
    if token or any(spec.kind == "crash" for spec in specs):
        app.add_middleware(CountRequests, faults=faults)
    add_admin_routes(app, faults, token)
    install_error_handlers(app, metrics)
    add_health_routes(app, health)
    add_metrics_route(app, metrics)
    metrics.gauge("servescope_ready").set_function(lambda: 1.0 if health.ready else 0.0)
    # Inside the telemetry layer: a refused request is still a 431 or 503 in the HTTP metrics.
    app.add_middleware(
        Admission,
        limit=settings.max_concurrent_requests,
        shed=metrics.counter("servescope_requests_shed_total"),
        rejected=metrics.counter("servescope_rejected_inputs_total"),
    )
    if settings.telemetry_enabled:
        app.add_middleware(HTTPTelemetryMiddleware, metrics=metrics)
    return faults
