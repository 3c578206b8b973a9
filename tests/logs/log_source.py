"""Real log lines for the Fluent Bit filter's tests: the services' own logging configuration.

Run as a script (a process of its own: structlog and logging are configured globally):

    python log_source.py TRACES INFO_RATIO

configures logging exactly as a service does (servescope.telemetry.logging.configure_logging,
JSON, level debug, the services' INFO sampler at INFO_RATIO), starts TRACES traces with the
OpenTelemetry SDK and logs what a request logs inside each (a DEBUG line, the access
line at INFO, a WARNING for a rejected upload, an ERROR for a failed call), plus lines outside
any trace (uvicorn's startup through the standard library, background DEBUG and INFO lines), and prints them on stdout as
the services do. Some trace ids sit a few units either side of the bound of 10%, where a
filter that compares doubles instead of 64-bit integers gets the answer wrong.
"""

from __future__ import annotations

import logging
import random
import sys

import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, TraceIdRatioBased

from servescope.telemetry.logging import configure_logging

EDGE_BOUND = TraceIdRatioBased.get_bound_for_rate(0.1)
EDGE_OFFSETS = (-2, -1, 0, 1)


class EdgeIds(RandomIdGenerator):
    """Random ids, and every 40th trace id's low 64 bits next to the 10% bound."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.count = 0

    def generate_span_id(self) -> int:
        return self.rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        self.count += 1
        high = self.rng.getrandbits(64) or 1
        if self.count % 40 == 0:
            low = EDGE_BOUND + EDGE_OFFSETS[(self.count // 40) % len(EDGE_OFFSETS)]
        else:
            low = self.rng.getrandbits(64)
        return (high << 64) | low


def main(traces: int, info_ratio: float) -> None:
    configure_logging("preprocess", "0.1.0", "debug", "json", info_ratio)
    log = structlog.get_logger()
    uvicorn = logging.getLogger("uvicorn.error")
    # The services' spans are recorded or not by their head sampler; the log sampler reads only
    # the trace id, so every span here is recorded.
    tracer = TracerProvider(sampler=ALWAYS_ON, id_generator=EdgeIds(20261201)).get_tracer("test")
    rng = random.Random(7)
    uvicorn.info("Started server process [1]")
    uvicorn.info("Application startup complete.")
    for number in range(traces):
        with tracer.start_as_current_span("POST /v1/predict"):
            # structlog, not the standard library: a standard-library INFO/DEBUG record in a
            # trace the services' sampler drops raises structlog.DropEvent out of the call.
            log.debug("connect_tcp.started", logger="httpcore.connection", port=8001)
            kind = rng.random()
            if kind < 0.08:
                log.warning("request_rejected", kind="undecodable_image", stage="decode")
                status = 400
            elif kind < 0.11:
                log.error("request_failed", kind="error", stage="classifier")
                status = 502
            else:
                status = 200
            log.info(
                "http_request",
                http_route="/v1/predict",
                http_request_method="POST",
                http_response_status_code=status,
                duration_ms=round(rng.uniform(5, 40), 3),
            )
        # Outside any trace: background work, sampled by a hash of the line.
        log.debug("drift_window", window=number)
        if number % 3 == 0:
            log.info("model_metadata_refreshed", model_name="digits")
        if number % 500 == 0:
            log.warning("model_metadata_refresh_failed", error="timeout")
    uvicorn.info("Shutting down")


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
