"""Structured logs: JSON lines on stdout, one event per line, never a payload.

structlog renders our own events and hands the line straight to the root handler: through
the standard library's records a line cost ~97 us, this way ~21 us (measured here), and with
every line kept a service writes one per request. The standard library's records (uvicorn's,
asyncio's) go through the same processors on that handler, so every line a service prints
is one JSON object of the same shape, written by one writer.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from servescope.telemetry.sinks import LogStreamHandler

_LEVELS = {"exception": "error", "warn": "warning", "critical": "critical", "fatal": "critical"}
_TRACE_ID_LIMIT = (1 << 64) - 1


class LogSampler:
    """Adds trace and span ids to every line inside a trace, and samples at the source.

    WARNING and above are always kept. INFO and DEBUG lines inside a trace are kept for a
    share of traces chosen from the trace id with the same rule as OpenTelemetry's ratio
    sampler, so every service makes the same choice for a trace and, at equal ratios, the
    traces kept are the traces sampled. Lines outside any trace (startup) are kept.
    """

    def __init__(self, info_ratio: float) -> None:
        self.bound = TraceIdRatioBased.get_bound_for_rate(info_ratio)
        # servescope_log_lines_total children by (level, decision), bound by bind_metrics.
        self.counts: dict[tuple[str, str], Any] = {}

    def keeps_info(self, trace_id: int) -> bool:
        """Whether INFO lines of this trace are kept: callers can skip building a line."""
        return (trace_id & _TRACE_ID_LIMIT) < self.bound

    def count(self, level: str, decision: str) -> None:
        child = self.counts.get((level, decision))
        if child is not None:
            child.inc()

    def __call__(
        self, _: object, method_name: str, event_dict: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        level = _LEVELS.get(method_name, method_name)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            if level in ("debug", "info") and not self.keeps_info(context.trace_id):
                self.count(level, "dropped")
                raise structlog.DropEvent
            event_dict["trace_id"] = format(context.trace_id, "032x")
            event_dict["span_id"] = format(context.span_id, "016x")
        self.count(level, "kept")
        return event_dict

    def filter(self, record: logging.LogRecord) -> bool:
        """The same choice for a standard-library line, as a handler filter.

        Raising DropEvent is how a structlog line is dropped, but out of a library's
        `logging` call it would reach the caller's request path; a filter returns False.
        """
        level = record.levelname.lower()
        context = trace.get_current_span().get_span_context()
        if (
            level in ("debug", "info")
            and context.is_valid
            and not self.keeps_info(context.trace_id)
        ):
            self.count(level, "dropped")
            return False
        return True


def log_sampler() -> LogSampler | None:
    """The sampler configure_logging installed, if any."""
    for processor in structlog.get_config()["processors"]:
        if isinstance(processor, LogSampler):
            return processor
    return None


def bind_log_metrics(metrics: Any) -> None:
    """Count kept and dropped lines in this service's servescope_log_lines_total."""
    counter = metrics.counter("servescope_log_lines_total")
    sampler = log_sampler()
    if sampler is not None:
        sampler.counts = {
            (level, decision): counter.labels(level, decision)
            for level in ("debug", "info", "warning", "error", "critical")
            for decision in ("kept", "dropped")
        }


def _dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=default).decode()  # type: ignore[arg-type]


class RootHandlerLogger:
    """structlog's final logger: the rendered line goes to the root logger's handler.

    Looks the handler up for every line rather than holding one, so loggers cached before a
    new configuration (tests configure again) write where the configuration says.
    """

    def msg(self, message: bytes | str) -> None:
        line = message if isinstance(message, bytes) else message.encode()
        for handler in logging.getLogger().handlers:
            if isinstance(handler, LogStreamHandler):
                handler.write_line(line)

    debug = info = warning = warn = error = err = critical = fatal = exception = log = msg


def _root_handler_logger(*_: object) -> RootHandlerLogger:
    return RootHandlerLogger()


def configure_logging(
    service: str,
    version: str,
    level: str = "info",
    fmt: str = "json",
    info_sample_ratio: float = 1.0,
) -> None:
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)

    def add_service(
        _: object, __: str, event_dict: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        event_dict.setdefault("service", service)
        event_dict.setdefault("version", version)
        return event_dict

    sampler = LogSampler(info_sample_ratio)
    shared: list[structlog.typing.Processor] = [
        # First, so a line that will be dropped costs as little as possible.
        sampler,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        add_service,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            # JSON as orjson's bytes, not decoded to be encoded again on the way out.
            renderer if fmt == "console" else structlog.processors.JSONRenderer(orjson.dumps),
        ],
        logger_factory=_root_handler_logger,
        # Levels below the configured one are methods that do nothing: no check per call.
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    handler = LogStreamHandler(sys.stdout)  # a line it cannot write is counted, not raised
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    handler.addFilter(sampler)  # libraries' lines: dropped before the chain can raise
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers propagate to the root handler above instead of printing text.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
