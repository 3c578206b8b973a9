"""`servescope soak` for 90 s, the same code `make soak` runs for ten minutes: the local stack
under mixed traffic (good digits, bad inputs, the per-model route) with faults switching on
and off, every service's RSS, descriptors and threads sampled from /proc. Its goals hold (RSS
growth under 5% after a 20 s warm-up, no 5xx that no fault explains, no restart), the report
goes where it is told (never docs/), and no process it started is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from servescope.cli import main as cli
from servescope.cli.paths import repo_root

SECONDS = 90
# Start (seconds), 90 s of traffic, stop (up to 15 s a service): well inside the bound.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(SECONDS + 150)]


def _started_under(run_dir: Path) -> list[int]:
    """PIDs of processes whose environment names `run_dir`: the soak's services (their
    trace files live there). Only our own processes' environments are readable."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if str(run_dir).encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
    return found


def test_a_90_second_soak_meets_its_goals_and_writes_its_report(tmp_path: Path) -> None:
    docs = repo_root() / "docs" / "soak.md"
    before = docs.stat().st_mtime_ns if docs.exists() else None
    run_dir, out, data = tmp_path / "run", tmp_path / "soak.md", tmp_path / "soak.json"
    handler = signal.getsignal(signal.SIGTERM)
    try:
        code = cli.main(
            [
                "soak",
                f"--seconds={SECONDS}",
                "--warmup=20",
                "--sample-every=2",
                f"--run-dir={run_dir}",
                f"--out={out}",
                f"--json={data}",
            ]
        )
    finally:
        signal.signal(signal.SIGTERM, handler)
        left = _started_under(run_dir)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running: {left}"

    report = json.loads(data.read_text())
    text = out.read_text()
    print(text)  # the figures, with -s
    assert "## Goals" in text
    assert report["elapsed"] >= SECONDS
    assert docs.exists() == (before is not None)
    assert before is None or docs.stat().st_mtime_ns == before, "the test wrote into docs/"
    # Enough of everything happened for the verdict to mean something.
    for name, samples in report["samples"].items():
        assert len(samples) >= 40, name
        assert report["trends"][name] is not None, name
    classes = report["answers"]["by_class"]
    assert classes["2xx"] > 500
    assert classes["4xx"] > 20  # the bad inputs, refused
    assert len(report["windows"]) >= 6
    assert any(f["fault_on"] for f in report["answers"]["failures"]), "no fault failed anything"
    failed = [g for g in report["goals"] if not g["met"]]
    assert not failed, (failed, report["answers"]["failures"], report["notes"])
    assert not report["broken"], report["broken"]
    assert code == 0
