"""Run a service under uvicorn with a graceful shutdown that loses no in-flight request.

On SIGTERM: readiness turns false at once, the service keeps serving for `drain_seconds`
(time for Kubernetes to take the pod out of its Service endpoints), then the listener
closes, in-flight requests finish (up to `graceful_timeout_seconds`) and the process exits 0.
A second signal skips the drain.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

import structlog
import uvicorn
from fastapi import FastAPI

from servescope.telemetry.health import Health
from servescope.telemetry.logging import configure_logging
from servescope.telemetry.settings import CommonSettings

SettingsT = TypeVar("SettingsT", bound=CommonSettings)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, health: Health, drain_seconds: float) -> None:
        super().__init__(config)
        self.health = health
        self.drain_seconds = drain_seconds
        self._signalled = False

    async def on_tick(self, counter: int) -> bool:
        # The app marks health.fatal when it can never become ready; stop instead of idling.
        if self.health.fatal:
            return True
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        log = structlog.get_logger()
        self.health.draining = True
        if self._signalled or self.drain_seconds <= 0:
            log.info("shutdown_started", signal=signal.Signals(sig).name, drain_seconds=0)
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        log.info(
            "shutdown_started", signal=signal.Signals(sig).name, drain_seconds=self.drain_seconds
        )
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(
            loop.call_later, self.drain_seconds, super().handle_exit, sig, frame
        )


def serve(app: FastAPI, settings: CommonSettings, health: Health) -> None:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # configure_logging already routed uvicorn's records
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_timeout_seconds) or 1,
        lifespan="on",
        server_header=False,
    )
    server = DrainingServer(config, health, settings.drain_seconds)
    # uvicorn re-raises the caught signal after shutting down; with a no-op handler in place
    # that becomes a clean exit 0 instead of death by SIGTERM.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    if health.fatal:
        structlog.get_logger().error("exiting_after_fatal_error", error=health.fatal)
        raise SystemExit(1)
    if not server.started:
        raise SystemExit(3)  # startup failed (port taken, model missing): the log says why
    structlog.get_logger().info("shutdown_complete")


def run_service(
    create_app: Callable[[SettingsT, Health], FastAPI], settings_class: Callable[[], SettingsT]
) -> None:
    """The entry point every service shares: settings, logging, app, then serve."""
    settings = settings_class()
    configure_logging(
        settings.service_name,
        settings.version,
        settings.log_level,
        settings.log_format,
    )
    health = Health(settings.service_name, settings.version)
    serve(create_app(settings, health), settings, health)
