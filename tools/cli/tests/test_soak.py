"""`servescope soak`'s verdict on synthetic runs: a steady service passes, a leak is flagged,
the warm-up is left out, 5xx are told apart by whether a fault was on; the fault plan, the
report and the command line. The real 90 s soak is tests/integration/test_soak.py."""

from __future__ import annotations

import itertools
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from servescope.cli import main as cli
from servescope.cli.commands import soak as soak_command
from servescope.cli.soak import (
    FAULT_ROTATION,
    Answers,
    FaultWindow,
    MiB,
    Sample,
    SoakPlan,
    SoakReport,
    classify,
    fault_plan,
    read_proc,
    render,
    trend,
    verdict,
    write,
)

WARMUP = 150.0


def _samples(rss_at, seconds: float = 600, every: float = 5, pid: int = 42) -> list[Sample]:
    return [
        Sample(t, pid, int(rss_at(t)), 20, 8)
        for t in (i * every for i in range(int(seconds / every) + 1))
    ]


def test_a_steady_service_with_noise_meets_the_goal() -> None:
    noise = random.Random(1)
    samples = _samples(lambda t: 100 * MiB + noise.uniform(-2, 2) * MiB)
    found = trend(samples, WARMUP)
    assert found is not None
    assert abs(found.growth_percent) < 2
    assert found.met


def test_a_leak_of_a_mib_a_minute_is_flagged() -> None:
    samples = _samples(lambda t: 100 * MiB + t / 60 * MiB)
    found = trend(samples, WARMUP)
    assert found is not None
    assert found.mib_per_hour == pytest.approx(60)
    # 7.5 MiB over the 450 s after the warm-up, on 102.5 MiB.
    assert found.growth_percent == pytest.approx(100 * 7.5 / 102.5)
    assert not found.met
    goals = verdict({"classifier": found}, Answers(total=1), {"classifier": 0})
    assert goals[0][2] is False
    assert "+7.3%" in goals[0][1]


def test_growth_during_the_warm_up_is_left_out() -> None:
    samples = _samples(lambda t: (60 + min(t, 100) * 0.4) * MiB)  # +40 MiB, then flat
    found = trend(samples, WARMUP)
    assert found is not None
    assert found.growth_percent == pytest.approx(0, abs=1e-9)
    assert found.met
    assert trend(samples, 0.0) is not None
    assert not trend(samples, 0.0).met  # type: ignore[union-attr]


def test_only_the_last_process_counts_after_a_restart() -> None:
    before = _samples(lambda t: 300 * MiB, seconds=300, pid=1)
    after = [Sample(t + 305, 2, 100 * MiB, 20, 8) for t in range(0, 300, 5)]
    found = trend(before + after, WARMUP)
    assert found is not None
    assert found.samples == len(after)
    assert found.growth_percent == pytest.approx(0)


def test_too_few_samples_is_no_trend_and_not_met() -> None:
    assert trend(_samples(lambda t: MiB, seconds=10), WARMUP) is None
    assert trend([], WARMUP) is None
    goals = verdict({"preprocess": None}, Answers(total=1), {"preprocess": 0})
    assert goals[0][2] is False


def test_5xx_are_expected_only_while_a_failing_fault_was_on() -> None:
    windows = [
        FaultWindow("classifier", "error:infer:0.3", 10, 20),
        FaultWindow("classifier", "unready", 40, 50),
    ]
    answers = [
        (1.0, 1.1, 200, ""),
        (2.0, 2.1, 415, "unsupported_media_type"),
        (12.0, 12.1, 502, "classifier_error"),  # during the error fault
        (9.5, 10.5, 502, "classifier_error"),  # sent before, answered while on
        (20.5, 20.6, 502, "classifier_error"),  # after it went off
        (45.0, 45.1, 503, "overloaded"),  # unready fails no request: unexpected
        (60.0, 70.0, 0, "client_timeout"),  # no answer, no fault
    ]
    found = classify(answers, windows)
    assert found.total == 7
    assert found.by_class == Counter({"2xx": 1, "4xx": 1, "5xx": 4, "no answer": 1})
    assert found.expected == 2
    assert found.unexpected == 3
    assert found.failures[(502, "classifier_error", True)] == 2
    assert found.failures[(0, "client_timeout", False)] == 1
    goals = verdict({}, found, {})
    assert goals[1][2] is False
    assert verdict({}, classify(answers[:4], windows), {})[1][2] is True


def test_the_fault_plan_rotates_one_fault_at_a_time_and_ends_quiet() -> None:
    plan = fault_plan(600, 30)
    assert len(plan) == 20  # at 10, 40, ..., 580 s
    assert [(s, spec) for _, _, s, spec in plan[: len(FAULT_ROTATION)]] == list(FAULT_ROTATION)
    for (on, off, _, _), (next_on, _, _, _) in itertools.pairwise(plan):
        assert off - on == pytest.approx(10)
        assert next_on - off == pytest.approx(20)
    assert plan[-1][1] <= 600 - 10
    assert fault_plan(90, 10)[0][:2] == pytest.approx((10 / 3, 20 / 3))


def test_the_report_says_which_goal_is_missed_and_is_written(tmp_path: Path) -> None:
    leak = _samples(lambda t: 100 * MiB + t / 60 * MiB)
    steady = _samples(lambda t: 80 * MiB)
    report = SoakReport(
        plan=SoakPlan(seconds=600, run_dir=tmp_path),
        date="2026-12-01 10:00 UTC",
        elapsed=600.0,
        samples={"classifier": steady, "postprocess": steady, "preprocess": leak},
        windows=[FaultWindow("classifier", "error:infer:0.3", 10, 20)],
        answers=classify([(12.0, 12.1, 502, "classifier_error")], []),
        restarts={"classifier": 0, "postprocess": 1, "preprocess": 0},
    )
    assert not report.met
    assert [ok for _, _, ok in report.goals()] == [False, False, False]
    text = render(report)
    assert "| preprocess | 102.5 | 110.0 | +7.32% | +60.00 |" in text
    assert "| 502 | classifier_error | 0 | 1 |" in text
    assert text.count("| no |") == 3
    write(report, tmp_path / "soak.md", tmp_path / "soak.json")
    assert (tmp_path / "soak.md").read_text() == text
    assert '"met": false' in (tmp_path / "soak.json").read_text()


def test_read_proc_reads_this_process_and_none_for_a_gone_one() -> None:
    found = read_proc(os.getpid())
    assert found is not None
    rss, fds, threads = found
    assert rss > 10 * MiB
    assert fds >= 3
    assert threads >= 1
    assert read_proc(2**22 + 1) is None  # above the kernel's pid_max


def test_the_command_line() -> None:
    args = cli.build_parser().parse_args(["soak"])
    assert args.func is soak_command.cmd_soak
    assert (args.seconds, args.warmup, args.out) == (600.0, None, "docs/soak.md")
    assert SoakPlan().warmup_seconds == 150
    assert SoakPlan(seconds=90, warmup=20).warmup_seconds == 20
    assert SoakPlan(seconds=90).cycle_seconds == 10
    assert SoakPlan(seconds=600).cycle_seconds == 30
    args = cli.build_parser().parse_args(["soak", "--seconds", "90", "--warmup", "20"])
    assert (args.seconds, args.warmup) == (90.0, 20.0)


def test_a_run_cut_short_is_not_met_even_when_its_goals_are(tmp_path: Path) -> None:
    steady = _samples(lambda t: 80 * MiB)
    report = SoakReport(
        plan=SoakPlan(seconds=600, run_dir=tmp_path),
        date="2026-12-01 10:00 UTC",
        elapsed=600.0,
        samples={"classifier": steady},
        windows=[],
        answers=classify([(1.0, 1.1, 200, "")], []),
        restarts={"classifier": 0},
    )
    assert report.met
    report.broken.append("sampling stopped early: OSError()")
    assert not report.met
    assert "- sampling stopped early" in render(report)
