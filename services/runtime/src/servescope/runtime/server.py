"""Run a service under uvicorn with a graceful shutdown that loses no in-flight request.

On SIGTERM: readiness turns false at once, the service keeps serving for `drain_seconds`
(time for Kubernetes to take the pod out of its Service endpoints), then the listener
closes, in-flight requests finish (up to `graceful_timeout_seconds`) and the process exits 0.
A second signal skips the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
import struct
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

import structlog
import uvicorn
from fastapi import FastAPI

from servescope.runtime.health import Health
from servescope.runtime.settings import CommonSettings
from servescope.telemetry.logging import configure_logging
from servescope.telemetry.tracing import configure_tracing, shutdown_tracing

SettingsT = TypeVar("SettingsT", bound=CommonSettings)

# After the listener closes, the longest wait for a just-accepted connection's request.
ACCEPTED_GRACE_SECONDS = 0.25

# Linux's SO_ATTACH_FILTER with a one-instruction classic BPF program, "return 0": the
# listener drops every packet, so a new SYN is never answered (the client retries and is
# refused once the listener is gone) while the accept queue is drained.
SO_ATTACH_FILTER = 26
DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, accept 0 bytes


def stop_queueing(listener: socket.socket) -> None:
    """Make the kernel stop completing new connections on `listener` (best effort)."""
    program = ctypes.create_string_buffer(DROP_ALL)
    fprog = struct.pack("HP", 1, ctypes.addressof(program))  # struct sock_fprog
    # Not Linux: the window between the last accept and the close stays open.
    with contextlib.suppress(OSError):
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


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

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's own shutdown closes the listener, which resets every connection still in
        # the kernel's accept queue, and at once closes every connection with no request under
        # way, including those just accepted whose request is not read yet: a reset too.
        # Take the queued connections first, close the listener, and give the fresh
        # connections a moment to deliver their request; uvicorn then finishes them.
        loop = asyncio.get_running_loop()
        for conn in self._close_listeners():
            await loop.connect_accepted_socket(self._protocol, conn)
        for _ in range(round(ACCEPTED_GRACE_SECONDS / 0.01)):
            if all(getattr(c, "cycle", None) for c in self.server_state.connections):
                break
            await asyncio.sleep(0.01)
        await super().shutdown(sockets)

    def _close_listeners(self) -> list[socket.socket]:
        """Accept what is queued and close the listeners in one step (no await in between).

        Closing a listener resets every connection the kernel completed but nobody accepted,
        so the kernel first stops completing new ones; only then is the queue emptied.
        """
        listeners = [
            socket.fromfd(sock.fileno(), sock.family, sock.type)  # a dup: closing it is ours
            for server in self.servers
            for sock in server.sockets
        ]
        accepted: list[socket.socket] = []
        try:
            for listener in listeners:
                stop_queueing(listener)
                listener.setblocking(False)
                while True:
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    conn.setblocking(False)
                    accepted.append(conn)
            for server in self.servers:
                server.close()
        finally:
            for listener in listeners:
                listener.close()
        return accepted

    def _protocol(self) -> asyncio.Protocol:
        """A connection handler exactly like the ones uvicorn makes for its listener."""
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        return protocol

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
        settings.log_info_sample_ratio if settings.telemetry_enabled else 0.0,
    )
    provider = configure_tracing(settings)
    health = Health(settings.service_name, settings.version)
    try:
        serve(create_app(settings, health), settings, health)
    finally:
        # Flush the spans still queued for export, within a bound.
        if provider is not None and not shutdown_tracing(
            provider, settings.trace_flush_timeout_seconds
        ):
            structlog.get_logger().warning(
                "trace_flush_incomplete", timeout_seconds=settings.trace_flush_timeout_seconds
            )
