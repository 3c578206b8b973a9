"""`servescope up` end to end: what a newcomer runs, on free ports, stopped with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servescope.cli.local.process import free_port, http_get

pytestmark = pytest.mark.slow


def _wait_for_line(process: subprocess.Popen[str], text: str, timeout: float) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if text in line:
            return lines
    raise AssertionError(f"no {text!r} within {timeout} s; got:\n" + "\n".join(lines))


def test_up_starts_everything_reports_it_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("pre", "cls", "post", "prom", "am", "resp")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "servescope.cli",
            "up",
            f"--port-preprocess={ports['pre']}",
            f"--port-classifier={ports['cls']}",
            f"--port-postprocess={ports['post']}",
            f"--port-prometheus={ports['prom']}",
            f"--port-alertmanager={ports['am']}",
            f"--port-responder={ports['resp']}",
            "--rate=5",
            f"--run-dir={tmp_path}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, like a terminal's job
    )
    try:
        lines = _wait_for_line(process, "Ctrl-C stops everything", timeout=90)
        text = "\n".join(lines)
        assert f"http://127.0.0.1:{ports['pre']}/v1/predict" in text
        assert f"http://127.0.0.1:{ports['prom']}" in text  # Prometheus ran (CI installs it)
        assert "incident notes in" in text, text  # Alertmanager and the responder ran
        assert f"--url http://127.0.0.1:{ports['pre']}" in text  # hints fit the chosen port
        for port in (ports["pre"], ports["cls"], ports["post"]):
            assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        assert http_get(f"http://127.0.0.1:{ports['resp']}/healthz")[0] == 200
        edge_metrics = f"http://127.0.0.1:{ports['pre']}/metrics"
        deadline = time.monotonic() + 30  # the traffic generator reaches the edge
        while b'http_route="/v1/predict"' not in http_get(edge_metrics)[1]:
            assert time.monotonic() < deadline, "no traffic reached the edge in 30 s"
            time.sleep(0.5)
        # Prometheus scrapes the responder too, as the chart's ServiceMonitor does.
        targets = f"http://127.0.0.1:{ports['prom']}/api/v1/targets"
        while b'"job":"responder"' not in http_get(targets)[1]:
            assert time.monotonic() < deadline, "Prometheus has no responder target"
            time.sleep(0.5)
        # Ctrl-C in a terminal signals the whole foreground process group, not one PID.
        os.killpg(process.pid, signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    finally:
        # SIGTERM lets `up` stop every process it started; SIGKILL would orphan them.
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, out
    assert "error:" not in out, out  # nothing reported as dying on its own
    stopped = next(line for line in out.splitlines() if line.startswith("stopped:"))
    for name in (
        "preprocess",
        "classifier",
        "postprocess",
        "prometheus",
        "alertmanager",
        "responder",
        "loadgen",
    ):
        assert name in stopped, stopped
    for port in ports.values():
        assert http_get(f"http://127.0.0.1:{port}/healthz", timeout=0.3)[0] == 0


def test_up_refuses_a_bad_fault_with_the_expected_form(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "servescope.cli",
            "up",
            "--fault",
            "preprocess:resize",
            f"--run-dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "SERVICE:STEP:SECONDS" in result.stdout
