"""A full disk under local logs and traces does not stop a service, shows, and heals.

Local mode writes each service's log lines (stdout and stderr, redirected to
<run dir>/<service>.log) and spans (SERVESCOPE_TRACE_FILE) to files. Here the test's whole
temporary directory is a real, small tmpfs mounted for the test (root only: CI and this
machine run tests as root; elsewhere the test is skipped), so the kernel itself answers
ENOSPC once a filler file takes the last byte, to every write of every service at once.
It is unmounted in a finalizer, after the services are stopped.

Asserted: every request is still answered 200, quickly (nothing blocks), no service exits;
the loss is visible in servescope_log_lines_lost_total and servescope_spans_lost_total;
once space is freed, writing resumes with a WARNING line that says how many were lost,
and each file has at most one line that does not parse (the one the disk cut short).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from servescope.cli.local.services import SERVICES, LocalStack
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

DISK_SIZE = "4m"
REQUESTS_WHILE_FULL = 100


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """tmp_path as a 4 MiB tmpfs. Listed before start_stack in a test's arguments, so it is
    set up first and unmounted last, when no service holds a file on it any more."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0755", "tmpfs", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield tmp_path
    finally:
        if subprocess.run(["umount", str(tmp_path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(tmp_path)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk` with one file; its path, to free the space again."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1):  # big blocks, then the last bytes of a partial page
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def lost(url: str) -> dict[str, float]:
    """Log lines lost, and spans lost to failed writes (the file's), from the metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "servescope_log_lines_lost_total":
                found["lines"] = sample.value
            elif sample.name == "servescope_spans_lost_total" and sample.labels == {
                "error_type": "write_failed"
            }:
                found["spans"] = sample.value
    return found


def unparsed(path: Path) -> list[bytes]:
    """The lines of a JSON-lines file that do not parse."""
    bad = []
    for line in path.read_bytes().splitlines():
        try:
            json.loads(line)
        except ValueError:
            bad.append(line[:300])
    return bad


def test_a_full_disk_loses_logs_and_spans_counted_and_serving_goes_on(
    small_disk: Path, start_stack
) -> None:
    traces = small_disk / "traces"
    stack: LocalStack = start_stack(
        env={
            name: {
                "SERVESCOPE_TRACE_FILE": str(traces / f"{name}.jsonl"),
                "SERVESCOPE_TRACE_SAMPLE_RATIO": "1.0",
                "SERVESCOPE_LOG_INFO_SAMPLE_RATIO": "1.0",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            }
            for name in SERVICES
        }
    )
    assert all(s.log_path.is_relative_to(small_disk) for s in stack.services.values())
    digit = heldout_samples(heldout_dir())[0]
    urls = {name: stack.services[name].url for name in SERVICES}

    def predict(client: httpx.Client, n: int) -> list[float]:
        seconds = []
        for _ in range(n):
            started = time.monotonic()
            response = client.post(
                "/v1/predict", content=digit.body, headers={"content-type": "image/png"}
            )
            seconds.append(time.monotonic() - started)
            assert response.status_code == 200, response.text
        return seconds

    with httpx.Client(base_url=stack.url, timeout=10) as client:
        before = predict(client, 20)
        time.sleep(0.5)  # the spans of those are written
        assert {name: lost(url) for name, url in urls.items()} == {
            name: {"lines": 0, "spans": 0} for name in SERVICES
        }

        filler = fill(small_disk)
        full = predict(client, REQUESTS_WHILE_FULL)
        time.sleep(0.5)  # span batches try, and fail
        during = {name: lost(url) for name, url in urls.items()}
        assert all(stack.services[name].running() for name in SERVICES)

        sizes = {p: p.stat().st_size for p in small_disk.rglob("*") if p.is_file()}
        filler.unlink()
        after = predict(client, 20)
        time.sleep(0.5)

    print(
        f"\nrequest p50 {sorted(before)[10] * 1000:.1f} ms before, "
        f"{sorted(full)[REQUESTS_WHILE_FULL // 2] * 1000:.1f} ms full (max "
        f"{max(full) * 1000:.0f} ms), {sorted(after)[10] * 1000:.1f} ms after; lost while "
        f"full: {during}"
    )
    # Every request the edge served while full wrote an access line and spans, all lost
    # (a few may fit in the last bytes of a page before the first ENOSPC).
    assert during["preprocess"]["lines"] >= REQUESTS_WHILE_FULL * 0.9
    assert during["preprocess"]["spans"] >= REQUESTS_WHILE_FULL * 0.9
    for name in ("classifier", "postprocess"):
        assert during[name]["lines"] > 0 and during[name]["spans"] > 0, during
    assert max(full) < 1.0, "a request waited on the full disk"

    for name, service in stack.services.items():
        log = service.log_path
        assert log.stat().st_size > sizes[log], f"{name} did not write its log again"
        trace_file = traces / f"{name}.jsonl"
        assert trace_file.stat().st_size > sizes[trace_file], f"{name} wrote no spans again"
        assert len(unparsed(trace_file)) <= 1, unparsed(trace_file)
        # Lines the log file cannot parse: at most the one cut short (uvicorn writes none).
        assert len(unparsed(log)) <= 1, unparsed(log)
        said = {"log_lines_lost": 0.0, "spans_lost": 0.0}
        for line in log.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") in said:
                    said[event["event"]] += event["lost"]
        total = lost(service.url)
        assert said == {"log_lines_lost": total["lines"], "spans_lost": total["spans"]}, name
        assert total["lines"] >= during[name]["lines"]
