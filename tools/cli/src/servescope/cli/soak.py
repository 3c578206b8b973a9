"""`servescope soak`: the local stack under hours of mixed traffic with faults switching on
and off, its memory, descriptors and threads watched, and a verdict.

    run(SoakPlan(seconds=600, run_dir=Path(".run/soak")))  -> SoakReport
    write(report, Path("docs/soak.md"), Path(".run/soak/soak.json"))

What runs is local mode as `servescope up` runs it (`LocalSession`: the three services on
free ports, each under the supervisor, with an admin token), without Prometheus or
Alertmanager: the soak scrapes every service's /metrics itself at each sample, as Prometheus
would. The traffic is the loadgen's: its `mixed` mix (held-out digits and 10% bad inputs) on
/v1/predict, and held-out digits over a small model repository on /v1/models/NAME/predict.
Faults from `FAULT_ROTATION` are switched on one at a time for a third of every cycle
through the services' /admin/faults, as `servescope fault` does.

Every `sample_every` seconds it reads each service's /proc/<pid>/status (VmRSS, Threads)
and counts /proc/<pid>/fd. The verdict (`trend`, `verdict`): resident memory grows by less
than `RSS_GROWTH_GOAL_PERCENT` after the warm-up, by a least-squares line through the
samples after it (so one noisy sample moves nothing); no 5xx and no unanswered request that
no switched-on fault explains; no process restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from servescope.cli.local.process import LocalStackError, free_port
from servescope.cli.local.services import SERVICES
from servescope.cli.local.session import LocalSession
from servescope.cli.paths import bundled_model, bundled_model_card, heldout_dir
from servescope.loadgen.inputs import bad_samples
from servescope.loadgen.traffic import LoadConfig, LoadResult, run_load

MiB = 1024 * 1024
RSS_GROWTH_GOAL_PERCENT = 5.0
DEFAULT_WARMUP_FRACTION = 0.25
START_ATTEMPTS = 3  # a free port can be taken before a service binds it: start again

# One fault at a time, in this order, round and round. Each fails or slows requests in a
# way the edge answers for (500 from its own step, 502/504 from a downstream's), or, for
# `unready`, breaks nothing a request sees. No `leak`, `cache` or `crash`: they grow memory
# or restart a process on purpose, which is what the soak must not find.
FAULT_ROTATION: tuple[tuple[str, str], ...] = (
    ("classifier", "error:infer:0.3"),
    ("preprocess", "delay:resize:0.2"),
    ("postprocess", "error:softmax_topk:0.3"),
    ("preprocess", "cpu:normalise:0.005"),
    ("classifier", "delay:infer:0.3"),
    ("classifier", "unready"),
    ("postprocess", "delay:softmax_topk:0.1"),
    ("preprocess", "error:decode:0.2"),
)
# Kinds that may fail a request while on; a 5xx during any other (`unready`) is unexpected.
FAILING_KINDS = frozenset({"error", "delay", "cpu"})
SOAK_MODELS = ("soak-a", "soak-b")


@dataclass(frozen=True)
class SoakPlan:
    seconds: float = 600.0
    warmup: float | None = None  # seconds; None: DEFAULT_WARMUP_FRACTION of the run
    sample_every: float = 5.0
    rate: float = 8.0  # mixed traffic on /v1/predict, per second
    models_rate: float = 2.0  # held-out digits over SOAK_MODELS, per second; 0: none
    fault_cycle: float | None = None  # seconds per fault (on a third of it); None: from `seconds`
    run_dir: Path = Path(".run/soak")
    start_timeout: float = 60.0
    say: Callable[[str], None] = print

    @property
    def warmup_seconds(self) -> float:
        return self.seconds * DEFAULT_WARMUP_FRACTION if self.warmup is None else self.warmup

    @property
    def cycle_seconds(self) -> float:
        if self.fault_cycle is not None:
            return self.fault_cycle
        return min(60.0, max(10.0, self.seconds / 20))


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the traffic began
    pid: int
    rss_bytes: int
    fds: int
    threads: int


@dataclass(frozen=True)
class FaultWindow:
    service: str
    spec: str
    on: float  # seconds since the traffic began, just before the switch-on call
    off: float  # just after the switch-off call answered

    @property
    def kind(self) -> str:
        return self.spec.split(":", 1)[0]


@dataclass(frozen=True)
class Trend:
    """Resident memory after the warm-up: a least-squares line through the samples."""

    samples: int
    start_bytes: float  # the line at the first sample after the warm-up
    end_bytes: float  # the line at the last sample
    slope_bytes_per_second: float

    @property
    def growth_percent(self) -> float:
        return 100.0 * (self.end_bytes - self.start_bytes) / self.start_bytes

    @property
    def mib_per_hour(self) -> float:
        return self.slope_bytes_per_second * 3600 / MiB

    @property
    def met(self) -> bool:
        return self.growth_percent < RSS_GROWTH_GOAL_PERCENT


def trend(samples: Sequence[Sample], warmup: float) -> Trend | None:
    """The line through the RSS samples taken from `warmup` on, of the process that ran
    last (a restarted one's earlier samples are another process); None under 3 samples."""
    if not samples:
        return None
    pid = samples[-1].pid
    after = [s for s in samples if s.t >= warmup and s.pid == pid]
    if len(after) < 3:
        return None
    n = len(after)
    mean_t = sum(s.t for s in after) / n
    mean_rss = sum(s.rss_bytes for s in after) / n
    var_t = sum((s.t - mean_t) ** 2 for s in after)
    if var_t == 0:
        return None
    slope = sum((s.t - mean_t) * (s.rss_bytes - mean_rss) for s in after) / var_t

    def line(t: float) -> float:
        return mean_rss + slope * (t - mean_t)

    return Trend(n, line(after[0].t), line(after[-1].t), slope)


def fault_plan(seconds: float, cycle: float) -> list[tuple[float, float, str, str]]:
    """(on, off, service, spec): one fault per cycle, on for its middle third, the rotation
    round and round; none in the last third of a cycle before the end."""
    plan: list[tuple[float, float, str, str]] = []
    start = cycle / 3
    while start + cycle / 3 <= seconds - cycle / 3:
        service, spec = FAULT_ROTATION[len(plan) % len(FAULT_ROTATION)]
        plan.append((start, start + cycle / 3, service, spec))
        start += cycle
    return plan


def explained(answer: tuple[float, float, int, str], windows: Sequence[FaultWindow]) -> bool:
    """Whether a fault that can fail requests was on while this request was in flight."""
    sent, ended = answer[0], answer[1]
    return any(w.kind in FAILING_KINDS and w.on <= ended and sent <= w.off for w in windows)


@dataclass
class Answers:
    """Every request's outcome, by status and kind, with a fault on or with none."""

    total: int = 0
    by_class: Counter[str] = field(default_factory=Counter)  # 2xx, 4xx, 5xx, no answer
    failures: Counter[tuple[int, str, bool]] = field(default_factory=Counter)  # 5xx, none

    @property
    def unexpected(self) -> int:
        return sum(n for (_, _, on), n in self.failures.items() if not on)

    @property
    def expected(self) -> int:
        return sum(n for (_, _, on), n in self.failures.items() if on)


def classify(
    answers: Sequence[tuple[float, float, int, str]], windows: Sequence[FaultWindow]
) -> Answers:
    result = Answers(total=len(answers))
    for answer in answers:
        status, kind = answer[2], answer[3]
        result.by_class["no answer" if status == 0 else f"{status // 100}xx"] += 1
        if status == 0 or status >= 500:
            result.failures[(status, kind, explained(answer, windows))] += 1
    return result


@dataclass
class SoakReport:
    plan: SoakPlan
    date: str
    elapsed: float
    samples: dict[str, list[Sample]]
    windows: list[FaultWindow]
    answers: Answers
    restarts: dict[str, int]
    labelled: int = 0
    correct: int = 0
    scrape_failures: int = 0
    notes: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # what kept the run from being whole

    def trends(self) -> dict[str, Trend | None]:
        return {name: trend(s, self.plan.warmup_seconds) for name, s in self.samples.items()}

    def goals(self) -> list[tuple[str, str, bool]]:
        return verdict(self.trends(), self.answers, self.restarts)

    @property
    def met(self) -> bool:
        return not self.broken and all(ok for _, _, ok in self.goals())


def verdict(
    trends: dict[str, Trend | None], answers: Answers, restarts: dict[str, int]
) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for each goal of the soak."""
    growth = ", ".join(
        f"{name} {t.growth_percent:+.1f}%" if t else f"{name} too few samples"
        for name, t in trends.items()
    )
    unexpected = answers.unexpected
    return [
        (
            f"RSS growth after warm-up under {RSS_GROWTH_GOAL_PERCENT:g}%, every service",
            growth,
            bool(trends) and all(t is not None and t.met for t in trends.values()),
        ),
        (
            "no unexpected 5xx or unanswered request (none while no fault that fails "
            "requests was on)",
            f"{unexpected} unexpected of {answers.total:,} requests; "
            f"{answers.expected} with a fault on",
            answers.total > 0 and unexpected == 0,
        ),
        (
            "no process restarted",
            ", ".join(f"{name} {n}" for name, n in restarts.items()),
            not any(restarts.values()),
        ),
    ]


# --- running it -------------------------------------------------------------------------


def read_proc(pid: int) -> tuple[int, int, int] | None:
    """(RSS bytes, open file descriptors, threads) of a process; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    try:
        rss_kib = int(fields["VmRSS"].split()[0])
        threads = int(fields["Threads"])
    except (KeyError, ValueError, IndexError):
        return None
    return rss_kib * 1024, fds, threads


def model_repository(root: Path) -> Path:
    """SOAK_MODELS: the bundled model under other names (a copy, nothing to build)."""
    card = json.loads(bundled_model_card().read_text())
    for name in SOAK_MODELS:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundled_model(), folder / f"{name}.onnx")
        (folder / "model-card.json").write_text(
            json.dumps({**card, "name": name, "file": f"{name}.onnx"}, indent=2)
        )
    return root


def _session(plan: SoakPlan, attempt: int) -> LocalSession:
    return LocalSession(
        run_dir=plan.run_dir / f"stack-{attempt}",
        ports={name: free_port() for name in SERVICES},
        prometheus_port=None,
        alertmanager_port=None,
        rate=0,  # the soak sends its own traffic, and times every answer
        exporter_port=None,
        grafana_port=None,
        jaeger=False,
        model_repository=model_repository(plan.run_dir / "models"),
        say=plan.say,
    )


def start_session(plan: SoakPlan) -> LocalSession:
    last: LocalStackError | None = None
    for attempt in range(START_ATTEMPTS):
        session = _session(plan, attempt)
        try:
            session.start(timeout=plan.start_timeout)
        except LocalStackError as exc:
            last = exc
            if "in use" not in str(exc) and "is taken" not in str(exc):
                raise
            continue
        return session
    assert last is not None
    raise last


def run(plan: SoakPlan) -> SoakReport:
    """Start the stack, soak it for `plan.seconds`, stop everything; the report."""
    say = plan.say
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    bad_samples()  # the decompression bomb takes seconds to make: before the clock starts
    say(f"starting the local stack (logs in {plan.run_dir}/) ...")
    session = start_session(plan)
    try:
        say(
            f"soaking for {plan.seconds:g} s: {plan.rate:g}/s mixed on /v1/predict, "
            f"{plan.models_rate:g}/s over {len(SOAK_MODELS)} models, one fault on for "
            f"{plan.cycle_seconds / 3:.0f} s of every {plan.cycle_seconds:.0f} s; "
            f"warm-up {plan.warmup_seconds:.0f} s, a sample every {plan.sample_every:g} s"
        )
        report = asyncio.run(_soak(plan, session))
        supervisor = session.containers.supervisor if session.containers else None
        statuses = supervisor.snapshot() if supervisor else {}
        report.restarts = {
            name: statuses[name].restarts if name in statuses else 0 for name in SERVICES
        }
        report.notes += session.notes
        return report
    finally:
        say("stopping ...")
        session.stop()


async def _soak(plan: SoakPlan, session: LocalSession) -> SoakReport:
    assert session.stack is not None
    services = session.stack.services
    token = session.token_file.read_text().strip()
    report = SoakReport(
        plan=plan,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        elapsed=0.0,
        samples={name: [] for name in SERVICES},
        windows=[],
        answers=Answers(),
        restarts={},
    )
    mixed = LoadResult(answers=[])
    models = LoadResult(answers=[])
    started = time.monotonic()

    def now() -> float:
        return time.monotonic() - started

    loads = [
        run_load(
            LoadConfig(
                url=session.stack.url,
                heldout_dir=heldout_dir(),
                rate=plan.rate,
                duration=plan.seconds,
                mix="mixed",
            ),
            progress=None,
            result=mixed,
        )
    ]
    if plan.models_rate > 0:
        loads.append(
            run_load(
                LoadConfig(
                    url=session.stack.url,
                    heldout_dir=heldout_dir(),
                    rate=plan.models_rate,
                    duration=plan.seconds,
                    models=list(SOAK_MODELS),
                    seed=1,
                ),
                progress=None,
                result=models,
            )
        )
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        traffic = asyncio.gather(*loads)
        faults = asyncio.create_task(_switch_faults(plan, session, client, token, now, report))
        watch = asyncio.create_task(_watch(plan, session, client, started, report, (mixed, models)))
        try:
            await traffic
        finally:
            faults.cancel()
            watch.cancel()
            ended = await asyncio.gather(faults, watch, return_exceptions=True)
        for task, outcome in zip(("fault switching", "sampling"), ended, strict=True):
            if isinstance(outcome, Exception):  # not a cancellation: the run is not whole
                report.broken.append(f"{task} stopped early: {outcome!r}")
        for name in services:  # every fault off, in case a switch-off call failed
            await _admin(client, services[name].port, token, "DELETE")
    report.elapsed = now()
    answers = (mixed.answers or []) + (models.answers or [])
    rebased = [(a[0] - started, a[1] - started, a[2], a[3]) for a in answers]
    report.answers = classify(rebased, report.windows)
    report.labelled = mixed.labelled + models.labelled
    report.correct = mixed.correct + models.correct
    return report


async def _admin(
    client: aiohttp.ClientSession, port: int, token: str, method: str, spec: str | None = None
) -> bool:
    try:
        async with client.request(
            method,
            f"http://127.0.0.1:{port}/admin/faults",
            json={"spec": spec} if spec is not None else None,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            await response.read()
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _switch_faults(
    plan: SoakPlan,
    session: LocalSession,
    client: aiohttp.ClientSession,
    token: str,
    now: Callable[[], float],
    report: SoakReport,
) -> None:
    assert session.stack is not None
    for on, off, service, spec in fault_plan(plan.seconds, plan.cycle_seconds):
        port = session.stack.services[service].port
        await asyncio.sleep(max(0.0, on - now()))
        switched_on = now()
        if not await _admin(client, port, token, "PUT", spec):
            report.notes.append(f"could not switch on {service} {spec} at {switched_on:.0f} s")
            continue
        plan.say(f"[{switched_on:6.0f} s] fault on: {service} {spec}")
        # On until the end unless the switch-off call answers (the end clears every fault).
        report.windows.append(FaultWindow(service, spec, switched_on, plan.seconds))
        try:
            await asyncio.sleep(max(0.0, off - now()))
        finally:
            if await _admin(client, port, token, "DELETE"):
                report.windows[-1] = FaultWindow(service, spec, switched_on, now())
            else:
                report.notes.append(f"could not switch off {service} {spec}; cleared at the end")
        plan.say(f"[{now():6.0f} s] fault off: {service} {spec}")


async def _watch(
    plan: SoakPlan,
    session: LocalSession,
    client: aiohttp.ClientSession,
    started: float,
    report: SoakReport,
    loads: tuple[LoadResult, ...],
) -> None:
    """A sample of every service every `sample_every` s, its /metrics scraped as Prometheus
    would, and a progress line every `progress_every` s."""
    assert session.stack is not None
    services = session.stack.services
    progress_every = max(10.0, plan.seconds / 20)
    next_progress = progress_every
    for n in range(1_000_000_000):
        await asyncio.sleep(max(0.0, started + n * plan.sample_every - time.monotonic()))
        t = time.monotonic() - started
        for name, service in services.items():
            pid = service.pid
            found = read_proc(pid) if pid is not None and service.running() else None
            if pid is not None and found is not None:
                report.samples[name].append(Sample(round(t, 2), pid, *found))
            try:
                async with client.get(service.url + "/metrics") as response:
                    await response.read()
                    report.scrape_failures += response.status != 200
            except (aiohttp.ClientError, TimeoutError):
                report.scrape_failures += 1
        if t >= next_progress:
            next_progress += progress_every
            plan.say(_progress(t, started, plan, report, loads))


def _progress(
    t: float, started: float, plan: SoakPlan, report: SoakReport, loads: tuple[LoadResult, ...]
) -> str:
    answers = [
        (a[0] - started, a[1] - started, a[2], a[3]) for load in loads for a in load.answers or []
    ]
    so_far = classify(answers, report.windows)
    memory = "  ".join(
        f"{name} {s[-1].rss_bytes / MiB:.1f}" for name, s in report.samples.items() if s
    )
    return (
        f"[{t:6.0f} s / {plan.seconds:g}] {so_far.total:,} answered; 5xx or none: "
        f"{so_far.expected} with a fault on, {so_far.unexpected} unexpected; RSS MiB: {memory}"
    )


# --- the report -------------------------------------------------------------------------


def _mib(value: float) -> str:
    return f"{value / MiB:.1f}"


def _span(values: Sequence[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def render(report: SoakReport) -> str:
    """docs/soak.md: the goals, each service's trend, its values over time, the answers."""
    plan = report.plan
    warmup = plan.warmup_seconds
    trends = report.trends()
    lines = [
        "# Soak: the local stack under mixed traffic and switching faults",
        "",
        "<!-- Generated by `servescope soak` (`make soak`); do not edit by hand. -->",
        "",
        f"Run {report.date}: {report.elapsed:.0f} s of traffic on local mode (the three "
        f"services as `servescope up` runs them, each under the supervisor): "
        f"{plan.rate:g} requests/s of the loadgen's `mixed` mix (held-out digits, 10% bad "
        f"inputs) on `/v1/predict` and {plan.models_rate:g}/s of held-out digits over "
        f"{len(SOAK_MODELS)} models on `/v1/models/NAME/predict`; every service's `/metrics` "
        f"scraped at each sample. Faults switched on one at a time through `/admin/faults`, "
        f"each for {plan.cycle_seconds / 3:.0f} s of every {plan.cycle_seconds:.0f} s "
        f"({len(report.windows)} switched on). RSS, open descriptors and threads read from "
        f"`/proc/<pid>/` every {plan.sample_every:g} s; the warm-up is the first "
        f"{warmup:.0f} s. Reproduce with `make soak` (`SOAK_SECONDS=N make soak` for another "
        "length).",
        "",
        "## Goals",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    lines += [
        f"| {goal} | {measured} | {'yes' if ok else 'no'} |"
        for goal, measured, ok in report.goals()
    ]
    lines += [
        "",
        "## Per service, after the warm-up",
        "",
        "Growth and slope are of a least-squares line through the RSS samples after the "
        "warm-up, from its value at the first of them to its value at the last.",
        "",
        "| service | RSS MiB at warm-up end | RSS MiB at end | growth | slope MiB/hour | "
        "open fds | threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, samples in report.samples.items():
        t = trends[name]
        after = [s for s in samples if s.t >= warmup] or samples
        if t is None or not after:
            lines.append(f"| {name} | too few samples | | | | | |")
            continue
        lines.append(
            f"| {name} | {_mib(t.start_bytes)} | {_mib(t.end_bytes)} | "
            f"{t.growth_percent:+.2f}% | {t.mib_per_hour:+.2f} | "
            f"{_span([s.fds for s in after])} | {_span([s.threads for s in after])} |"
        )
    lines += ["", "## Over time", "", _over_time(report), ""]
    lines += ["## Answers", "", _answers(report), ""]
    if report.notes or report.broken:
        notes = [*report.broken, *report.notes]
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


def _over_time(report: SoakReport, rows: int = 13) -> str:
    """RSS MiB / open fds / threads of each service at evenly spaced samples."""
    names = [n for n, s in report.samples.items() if s]
    if not names:
        return "(no samples)"
    by_time = {name: {s.t: s for s in report.samples[name]} for name in names}
    times = [s.t for s in report.samples[names[0]]]
    count = len(times)
    picks = sorted({round(i * (count - 1) / (rows - 1)) for i in range(rows)})
    head = "| t (s) | " + " | ".join(f"{n} RSS MiB / fds / threads" for n in names)
    lines = [head + " | fault on |", "|---" * (len(names) + 2) + "|"]
    for i in picks:
        t = times[i]
        cells = []
        for name in names:
            s = by_time[name].get(t)
            cells.append(f"{_mib(s.rss_bytes)} / {s.fds} / {s.threads}" if s else "-")
        on = [f"{w.service} {w.spec}" for w in report.windows if w.on <= t <= w.off]
        mark = " (warm-up)" if t < report.plan.warmup_seconds else ""
        lines.append(f"| {t:.0f}{mark} | " + " | ".join(cells) + f" | {', '.join(on)} |")
    return "\n".join(lines)


def _answers(report: SoakReport) -> str:
    answers = report.answers
    classes = ", ".join(f"{c} {n:,}" for c, n in sorted(answers.by_class.items()))
    accuracy = (
        f"; {report.correct}/{report.labelled} labelled digits right" if report.labelled else ""
    )
    lines = [
        f"{answers.total:,} requests: {classes}{accuracy}. The 4xx are the bad inputs, "
        "refused as they should be. 5xx and unanswered requests, by whether a fault that "
        "fails requests (error, delay, cpu) was on while the request was in flight:",
        "",
        "| status | kind | with a fault on | with none |",
        "|---|---|---|---|",
    ]
    keys = sorted({(status, kind) for status, kind, _ in answers.failures})
    for status, kind in keys:
        lines.append(
            f"| {status or 'no answer'} | {kind} | {answers.failures[(status, kind, True)]} | "
            f"{answers.failures[(status, kind, False)]} |"
        )
    if not keys:
        lines.append("| none | | 0 | 0 |")
    return "\n".join(lines)


def to_json(report: SoakReport) -> dict[str, Any]:
    plan = {k: v for k, v in asdict(report.plan).items() if k != "say"}
    plan["run_dir"] = str(plan["run_dir"])
    return {
        "date": report.date,
        "elapsed": report.elapsed,
        "plan": plan,
        "goals": [{"goal": g, "measured": m, "met": ok} for g, m, ok in report.goals()],
        "trends": {
            name: None
            if t is None
            else {**asdict(t), "growth_percent": t.growth_percent, "mib_per_hour": t.mib_per_hour}
            for name, t in report.trends().items()
        },
        "samples": {name: [asdict(s) for s in samples] for name, samples in report.samples.items()},
        "windows": [asdict(w) for w in report.windows],
        "answers": {
            "total": report.answers.total,
            "by_class": dict(report.answers.by_class),
            "failures": [
                {"status": s, "kind": k, "fault_on": on, "count": n}
                for (s, k, on), n in sorted(report.answers.failures.items())
            ],
        },
        "restarts": report.restarts,
        "scrape_failures": report.scrape_failures,
        "notes": report.notes,
        "broken": report.broken,
    }


def write(report: SoakReport, out: Path, json_path: Path | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(report))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(to_json(report), indent=1) + "\n")


def main(plan: SoakPlan, out: Path, json_path: Path | None, say: Callable[[str], None]) -> int:
    """Run, write, say the verdict: 0 when every goal is met, 1 when one is missed, 2 when
    the stack could not run."""
    try:
        report = run(plan)
    except (LocalStackError, OSError) as exc:
        say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        say("interrupted; everything started was stopped")
        return 130
    write(report, out, json_path)
    for goal, measured, ok in report.goals():
        say(f"{'met' if ok else 'MISSED'}: {goal}: {measured}")
    for problem in report.broken:
        say(f"error: {problem}; the verdict is not whole")
    for name, t in report.trends().items():
        if t is not None:
            say(
                f"{name}: RSS {_mib(t.start_bytes)} -> {_mib(t.end_bytes)} MiB after warm-up "
                f"({t.growth_percent:+.2f}%, {t.mib_per_hour:+.2f} MiB/hour)"
            )
    say(f"written: {out}" + (f", {json_path}" if json_path else ""))
    return 0 if report.met else 1
