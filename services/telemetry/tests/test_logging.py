"""Source log sampling on the real logging configuration: structlog's lines and libraries'."""

from __future__ import annotations

import logging

import orjson
import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from servescope.telemetry.logging import configure_logging


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]):
    def read() -> list[dict[str, object]]:
        return [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line]

    yield read
    logging.getLogger().handlers[:] = []
    structlog.reset_defaults()


def test_a_library_info_line_in_a_dropped_trace_is_dropped_without_raising(lines) -> None:
    configure_logging("preprocess", "test", info_sample_ratio=0.0)  # keep no INFO in traces
    tracer = TracerProvider(sampler=ALWAYS_ON).get_tracer("test")
    library = logging.getLogger("some.library")
    with tracer.start_as_current_span("request"):
        library.info("connection pool opened")  # raised DropEvent into the caller before
        library.warning("retrying")
        structlog.get_logger().info("http_request")
    library.info("outside any trace")
    events = [line["event"] for line in lines()]
    assert events == ["retrying", "outside any trace"]


def test_a_library_info_line_in_a_kept_trace_carries_the_trace_id(lines) -> None:
    configure_logging("preprocess", "test", info_sample_ratio=1.0)
    tracer = TracerProvider(sampler=ALWAYS_ON).get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        logging.getLogger("some.library").info("connection pool opened")
        trace_id = format(span.get_span_context().trace_id, "032x")
    (line,) = lines()
    assert line["event"] == "connection pool opened"
    assert line["trace_id"] == trace_id
