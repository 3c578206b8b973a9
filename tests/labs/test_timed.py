"""Timed drills: `timed: true` in lab.yaml starts a clock when `start` has set the broken
state, records the time to correct diagnosis at the first passing check or answer (never
again), and `lab list` and `lab status` show it; `reset` clears it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from servescope.cli.labs import LabFormatError, load_lab

from .conftest import LabCLI, free_port_base
from .test_runner import make_lab

DRILL = "drills/01-toy-drill"
CHECK = (
    "def check(ctx):\n"
    "    ctx.require(ctx.answer == 'classifier infer', 'the culprit', 'look again')\n"
)


def test_a_timed_drill_records_time_to_correct_diagnosis(tmp_path: Path) -> None:
    make_lab(tmp_path / "repo", DRILL, "timed: true\nanswer: {prompt: 'Which step?'}\n", CHECK)
    cli = LabCLI(tmp_path / "repo", tmp_path / "run", free_port_base())
    code, out = cli("start", DRILL)
    assert code == 0 and "timed" in out, out
    entry = cli.store.progress()[DRILL]
    assert entry["timed_from"] >= entry["started_at"]
    code, out = cli("list")
    assert "on the clock" in out, out

    time.sleep(1.1)
    code, out = cli("answer", DRILL, "classifier", "resize")  # wrong: the clock runs on
    assert code == 1 and "diagnosis_seconds" not in cli.store.progress()[DRILL]
    code, out = cli("answer", DRILL, "classifier", "infer")
    assert code == 0 and "time to diagnosis 0m01s" in out, out
    took = cli.store.progress()[DRILL]["diagnosis_seconds"]
    assert 1.0 <= took < 30

    time.sleep(1.1)
    assert cli("check", DRILL)[0] == 0  # a later pass does not move it
    assert cli.store.progress()[DRILL]["diagnosis_seconds"] == took
    for command in ("list", "status"):
        code, out = cli(command)
        assert code == 0 and "diagnosed in 0m01s" in out, out

    assert cli("reset", DRILL)[0] == 0
    assert DRILL not in cli.store.progress()


def test_untimed_labs_record_no_diagnosis_time(tmp_path: Path) -> None:
    make_lab(tmp_path / "repo")
    cli = LabCLI(tmp_path / "repo", tmp_path / "run", free_port_base())
    cli("start", "beginner/01-toy")
    (tmp_path / "repo" / "labs" / "beginner" / "01-toy" / "work" / "value.txt").write_text("42\n")
    code, out = cli("check", "beginner/01-toy")
    assert code == 0, out
    entry = cli.store.progress()["beginner/01-toy"]
    assert "diagnosis_seconds" not in entry and "timed_from" not in entry


def test_timed_must_be_a_boolean(tmp_path: Path) -> None:
    folder = make_lab(tmp_path / "repo", DRILL, "timed: yes please\n")
    with pytest.raises(LabFormatError, match="timed: expected true or false"):
        load_lab(folder)
