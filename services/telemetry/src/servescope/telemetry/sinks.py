"""Writing log lines and spans to local files, and what a write error does: nothing to a
request.

Local mode sends each service's log lines (stdout) and spans (SERVESCOPE_TRACE_FILE) to
files, and on a full disk every write to them fails (ENOSPC). The service goes on serving:
a line or span that cannot be written is lost and counted (servescope_log_lines_lost_total,
servescope_spans_lost_total), an ERROR line goes to stderr when losses start
(log_lines_write_failed, spans_write_failed) and a WARNING line says how many were lost
when writing works again (log_lines_lost, spans_lost). The standard library instead prints a
traceback to stderr for every line it cannot write, and the span exporter raised into its
export thread on every batch.

Whole lines are written with one os.write each, so a failed write loses exactly the lines
it names (a buffered stream would hold some and write them late, cut anywhere), and a line
a failed write cut short is ended before the next one, so readers lose only that line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson
import structlog


class LossCount:
    """Records lost, in a contract counter (with these label values) once the service's
    metrics exist."""

    def __init__(self, metric: str, *labels: str) -> None:
        self.metric = metric
        self.labels = labels
        self.counter: Any = None
        self.pending = 0  # lost before a counter was bound
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            if self.counter is not None:
                self.counter.inc(count)
            else:
                self.pending += count

    def bind(self, metrics: Any) -> None:
        with self._lock:
            counter = metrics.counter(self.metric)
            self.counter = counter.labels(*self.labels) if self.labels else counter
            if self.pending:
                self.counter.inc(self.pending)
                self.pending = 0


LOG_LINES_LOST = LossCount("servescope_log_lines_lost_total")
# Spans lost, by why (the contract's error_type values): the trace file's writes here, the
# span processor's queue and the OTLP exporter in servescope.telemetry.tracing.
SPANS_LOST = {
    why: LossCount("servescope_spans_lost_total", why)
    for why in ("queue_full", "after_shutdown", "export_failed", "write_failed")
}


def bind_loss_metrics(metrics: Any) -> None:
    """Count lost log lines and spans in this service's metrics."""
    LOG_LINES_LOST.bind(metrics)
    for count in SPANS_LOST.values():
        count.bind(metrics)


def _notice(event: str, exc: OSError) -> None:
    """One JSON line on stderr (fd 2, unbuffered: a notice that fails is gone, not held to
    be written late), best effort: stderr may be on the same full disk."""
    line = {
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "level": "error",
        "event": event,
        "error": str(exc),
    }
    with contextlib.suppress(OSError):
        os.write(2, orjson.dumps(line) + b"\n")


class LineWriter:
    """Whole lines appended to a file descriptor; what cannot be written is counted."""

    def __init__(self, fd: int, lost: LossCount, event: str) -> None:
        self.fd = fd
        self.lost = lost
        # The WARNING line's when writing works again; <name>_write_failed when it fails.
        self.event = event
        self.torn = False  # the last failed write left a line without its end
        self.losing = 0  # records lost since writing last worked

    def write(self, lines: Sequence[bytes]) -> int:
        """Write `lines` (each ending in a newline); the number lost. The caller serialises
        calls."""
        data = b"".join(lines)
        if self.torn:
            data = b"\n" + data
        offset = 0
        try:
            while offset < len(data):
                offset += os.write(self.fd, data[offset:])
        except OSError as exc:
            written = data[:offset]
            whole = written.count(b"\n") - (1 if self.torn and offset else 0)
            if offset:
                self.torn = not written.endswith(b"\n")
            lost = len(lines) - whole
            if not self.losing:
                _notice(f"{self.event.removesuffix('_lost')}_write_failed", exc)
            self.losing += lost
            self.lost.add(lost)
            return lost
        self.torn = False
        if self.losing:
            lost, self.losing = self.losing, 0
            self.resumed(lost)
        return 0

    def resumed(self, lost: int) -> None:
        structlog.get_logger().warning(self.event, lost=lost)


class SpanFile:
    """Spans' JSON lines appended to a file (local mode's trace store)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.writer = LineWriter(self.fd, SPANS_LOST["write_failed"], "spans_lost")
        self._lock = threading.Lock()

    def write(self, lines: Sequence[str]) -> int:
        with self._lock:
            return self.writer.write([line.encode() + b"\n" for line in lines])

    def close(self) -> None:
        with self._lock:
            os.close(self.fd)


class LogStreamHandler(logging.StreamHandler[TextIO]):
    """logging's StreamHandler, writing each line with one os.write to the stream's file
    descriptor (a stream without one, as under pytest's capture, is written as usual)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.writer: LineWriter | None = None
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            return
        stream.flush()  # what is buffered goes first, in order
        self.writer = LineWriter(fd, LOG_LINES_LOST, "log_lines_lost")

    def emit(self, record: logging.LogRecord) -> None:
        if self.writer is None:
            super().emit(record)
            return
        try:
            line = (self.format(record) + self.terminator).encode(errors="backslashreplace")
        except Exception:
            self.handleError(record)  # a bug in a line, not the disk: the standard report
            return
        # Called under the handler's (reentrant) lock: the resumed() line comes back here.
        self.writer.write([line])

    def write_line(self, line: bytes) -> None:
        """A line structlog has already rendered, written as a record's line would be (one
        path to stdout for every line, so they stay whole and in order)."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            if self.writer is not None:
                self.writer.write([line + b"\n"])
                return
            self.stream.write(line.decode(errors="backslashreplace") + self.terminator)
            self.flush()
