"""Log lines and spans whose write fails: counted, never raised, one notice per outage, and
no line left cut short. /dev/full fails every write with ENOSPC, as a full disk does; a
non-blocking pipe gives a real short write."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from servescope.telemetry.metrics import ServiceMetrics
from servescope.telemetry.sinks import (
    LOG_LINES_LOST,
    SPANS_LOST,
    LineWriter,
    LogStreamHandler,
    LossCount,
    SpanFile,
    bind_loss_metrics,
)


@pytest.fixture
def full() -> Iterator[int]:
    fd = os.open("/dev/full", os.O_WRONLY)
    yield fd
    os.close(fd)


def counted(metric: str, metrics: ServiceMetrics, **labels: str) -> float:
    value = metrics.registry.get_sample_value(metric, labels or None)
    assert value is not None
    return value


def test_a_write_that_fails_is_counted_with_one_notice_and_its_end_is_logged(
    full: int, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    lost = LossCount("servescope_spans_lost_total", "write_failed")
    writer = LineWriter(full, lost, "spans_lost")
    for _ in range(3):
        assert writer.write([b'{"a": 1}\n', b'{"b": 2}\n']) == 2
    assert lost.pending == 6  # no metrics yet: kept until they are bound
    notices = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    assert [(n["event"], n["level"]) for n in notices] == [("spans_write_failed", "error")]
    assert "No space left" in notices[0]["error"]

    metrics = ServiceMetrics("preprocess")
    lost.bind(metrics)
    assert counted("servescope_spans_lost_total", metrics, error_type="write_failed") == 6

    with (tmp_path / "spans.jsonl").open("wb") as space:
        writer.fd = space.fileno()  # the disk has room again
        with capture_logs() as logs:
            assert writer.write([b'{"c": 3}\n']) == 0
            assert writer.write([b'{"d": 4}\n']) == 0
    assert logs == [{"event": "spans_lost", "lost": 6, "log_level": "warning"}]
    assert (tmp_path / "spans.jsonl").read_bytes() == b'{"c": 3}\n{"d": 4}\n'


def test_a_line_a_short_write_cut_is_ended_so_only_it_is_lost() -> None:
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETFL, fcntl.fcntl(write, fcntl.F_GETFL) | os.O_NONBLOCK)
    capacity = fcntl.fcntl(write, 1032)  # F_GETPIPE_SZ
    try:
        writer = LineWriter(
            write, LossCount("servescope_spans_lost_total", "write_failed"), "spans_lost"
        )
        line = json.dumps({"pad": "x" * 1000}).encode() + b"\n"
        lines = [line] * (capacity // len(line) + 5)
        lost = writer.write(lines)  # the pipe takes `capacity` bytes, then EAGAIN
        assert lost == len(lines) - capacity // len(line)
        assert writer.torn
        first = os.read(read, capacity)
        with capture_logs():
            assert writer.write([b'{"after": 1}\n']) == 0
        rest = os.read(read, capacity)
    finally:
        os.close(read)
        os.close(write)
    parsed, bad = [], []
    for raw in (first + rest).splitlines():
        try:
            parsed.append(json.loads(raw))
        except ValueError:
            bad.append(raw)
    assert len(bad) == 1  # the cut line, alone on its line
    assert parsed[-1] == {"after": 1}
    assert len(parsed) == capacity // len(line) + 1


def test_log_lines_to_a_full_stdout_are_counted_not_reported_line_by_line(
    full: int, capfd: pytest.CaptureFixture[str]
) -> None:
    metrics = ServiceMetrics("classifier")
    bind_loss_metrics(metrics)
    before = counted("servescope_log_lines_lost_total", metrics)
    logger = logging.getLogger("test.sinks")
    logger.propagate = False
    with os.fdopen(os.dup(full), "w") as stdout:
        ours = LogStreamHandler(stdout)
        logger.handlers[:] = [ours]
        for n in range(50):
            logger.warning("line %d", n)
    assert counted("servescope_log_lines_lost_total", metrics) - before == 50
    assert len(capfd.readouterr().err.splitlines()) == 1  # the one notice

    # What the standard library does: a traceback on stderr for every line it cannot write.
    stdout = os.fdopen(os.dup(full), "w")
    logger.handlers[:] = [logging.StreamHandler(stdout)]
    for n in range(3):
        logger.warning("line %d", n)
    with contextlib.suppress(OSError):
        stdout.close()  # what it still holds cannot be written either
    assert capfd.readouterr().err.count("--- Logging error ---") == 3
    logger.handlers[:] = []


def test_a_stream_without_a_file_descriptor_is_written_as_before(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = LogStreamHandler(sys.stdout)  # pytest's capture: no fileno
    assert handler.writer is None
    handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None))
    assert capsys.readouterr().out == "hello\n"


def test_the_span_file_counts_into_the_spans_metric(tmp_path: Path) -> None:
    spans = SpanFile(tmp_path / "traces" / "edge.jsonl")
    assert spans.write(['{"span": 1}']) == 0
    spans.close()
    assert (tmp_path / "traces" / "edge.jsonl").read_text() == '{"span": 1}\n'
    assert spans.writer.lost is SPANS_LOST["write_failed"]
    assert SPANS_LOST["write_failed"].labels == ("write_failed",)
    assert LOG_LINES_LOST.metric == "servescope_log_lines_lost_total"
