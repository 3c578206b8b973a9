"""The traffic generator: open-loop requests at a fixed rate, a progress line, a summary.

Open loop (requests start on a schedule, not when the previous one ends) so a slow service
shows up as latency and a backlog, as it would under real users, capped by `concurrency`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiohttp
import numpy as np
import orjson

from servescope.loadgen.inputs import Sample, bad_samples, drift_samples, heldout_samples
from servescope.loadgen.popularity import DEFAULT_ZIPF_S, ModelPicker

MIXES = ("normal", "bad", "mixed", "drift")


@dataclass
class LoadConfig:
    url: str
    heldout_dir: Path  # the model's held-out digits (labels.csv and PNGs)
    rate: float = 5.0
    duration: float = 10.0  # seconds; 0 = until interrupted or `requests` is reached
    requests: int = 0  # 0 = no limit
    concurrency: int = 8
    mix: str = "normal"
    bad_fraction: float = 0.1  # share of bad inputs in the "mixed" mix
    timeout: float = 10.0
    seed: int = 0
    # Models to spread requests over (/v1/models/{name}/predict), most popular first, with
    # a Zipf popularity of exponent zipf_s; none = every request to /v1/predict.
    models: list[str] = field(default_factory=list)
    zipf_s: float = DEFAULT_ZIPF_S


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    correct: int = 0
    labelled: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    by_model: Counter[str] = field(default_factory=Counter)  # requests sent, per model
    correct_by_model: Counter[str] = field(default_factory=Counter)
    labelled_by_model: Counter[str] = field(default_factory=Counter)
    # When a list: every request's (sent, ended, status, kind) on the monotonic clock, status
    # 0 when nothing answered and kind "" for a 200, for a caller that lines answers up with
    # other events (`servescope soak`: whether a fault was on while the request was in flight).
    answers: list[tuple[float, float, int, str]] | None = None

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else 0.0

    def summary(self) -> str:
        rate = self.sent / self.elapsed if self.elapsed else 0.0
        lines = [
            f"requests: {self.sent} in {self.elapsed:.1f} s ({rate:.1f}/s), ok {self.ok}, "
            f"errors {sum(self.errors.values())}",
            f"latency ms: p50 {self.percentile(50):.1f}  p95 {self.percentile(95):.1f}  "
            f"p99 {self.percentile(99):.1f}",
        ]
        if self.labelled:
            lines.append(
                f"accuracy on labelled digits: {self.correct}/{self.labelled} "
                f"({self.correct / self.labelled:.3f})"
            )
        if self.by_model:
            lines.append(self._models_line())
        if self.errors:
            lines.append(
                "errors by kind: "
                + ", ".join(f"{kind} {count}" for kind, count in self.errors.most_common())
            )
        return "\n".join(lines)

    def _models_line(self, shown: int = 5) -> str:
        def entry(name: str, count: int) -> str:
            labelled = self.labelled_by_model[name]
            accuracy = (
                f", accuracy {self.correct_by_model[name] / labelled:.3f}" if labelled else ""
            )
            return f"{name} {count} ({count / self.sent:.1%}{accuracy})"

        top = self.by_model.most_common()
        line = f"requests by model ({len(top)} models): " + ", ".join(
            entry(name, count) for name, count in top[:shown]
        )
        return line + (f", and {len(top) - shown} more" if len(top) > shown else "")


def _samples(config: LoadConfig) -> itertools.cycle[Sample]:
    rng = random.Random(config.seed)  # nosec B311 - a seeded traffic mix, not a secret
    normal = list(heldout_samples(config.heldout_dir))
    if config.mix == "normal":
        pool = normal
    elif config.mix == "drift":
        pool = list(drift_samples(config.heldout_dir, config.seed))
    elif config.mix == "bad":
        pool = list(bad_samples())  # seconds to make (the bomb): only for mixes that send them
    else:
        bad = list(bad_samples())
        count = max(1, round(len(normal) * config.bad_fraction / (1 - config.bad_fraction)))
        pool = normal + [bad[i % len(bad)] for i in range(count)]
    rng.shuffle(pool)
    return itertools.cycle(pool)


async def _one(
    session: aiohttp.ClientSession,
    config: LoadConfig,
    sample: Sample,
    result: LoadResult,
    model: str | None = None,
) -> None:
    route = "/v1/predict" if model is None else f"/v1/models/{model}/predict"
    sent = time.monotonic()
    started = time.perf_counter()
    try:
        async with session.post(
            config.url.rstrip("/") + route,
            data=sample.body,
            headers={"Content-Type": sample.content_type},
        ) as response:
            body = await response.read()
            status = response.status
    except TimeoutError:
        result.errors["client_timeout"] += 1
        _answered(result, sent, 0, "client_timeout")
        return
    except aiohttp.ClientError as exc:
        result.errors[f"connection_{type(exc).__name__}"] += 1
        _answered(result, sent, 0, f"connection_{type(exc).__name__}")
        return
    finally:
        result.latencies.append(time.perf_counter() - started)
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        answer = {}
    kind = answer.get("kind", "unknown") if isinstance(answer, dict) else "unknown"
    _answered(result, sent, status, "" if status == 200 else kind)
    if status == 200:
        result.ok += 1
        if sample.label is not None:
            right = answer.get("label") == sample.label
            result.labelled += 1
            result.correct += right
            if model is not None:
                result.labelled_by_model[model] += 1
                result.correct_by_model[model] += right
    else:
        result.errors[f"{status} {kind}"] += 1


def _answered(result: LoadResult, sent: float, status: int, kind: str) -> None:
    if result.answers is not None:
        result.answers.append((sent, time.monotonic(), status, kind))


def _progress(result: LoadResult, started: float, out: TextIO, final: bool = False) -> None:
    line = (
        f"[{time.monotonic() - started:6.1f}s] sent {result.sent}  ok {result.ok}  "
        f"errors {sum(result.errors.values())}  p95 {result.percentile(95):.1f} ms"
    )
    if out.isatty():
        out.write("\r" + line + ("\n" if final else ""))
    else:
        out.write(line + "\n")
    out.flush()


async def run_load(
    config: LoadConfig, progress: TextIO | None = sys.stderr, result: LoadResult | None = None
) -> LoadResult:
    """Send the configured traffic; `result` fills in as it goes (readable after Ctrl-C)."""
    if config.mix not in MIXES:
        raise ValueError(f"unknown mix {config.mix!r}; choose one of {', '.join(MIXES)}")
    result = result if result is not None else LoadResult()
    samples = _samples(config)
    picker = ModelPicker(config.models, config.zipf_s, config.seed) if config.models else None
    limit = asyncio.Semaphore(config.concurrency)
    interval = 1.0 / config.rate
    started = time.monotonic()
    tasks: set[asyncio.Task[None]] = set()
    report_every = 1.0 if progress is not None and progress.isatty() else 5.0
    next_report = started + report_every

    async def guarded(sample: Sample, model: str | None) -> None:
        async with limit:
            await _one(session, config, sample, result, model)

    timeout = aiohttp.ClientTimeout(total=config.timeout)
    connector = aiohttp.TCPConnector(limit=config.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        try:
            for n in itertools.count():
                now = time.monotonic()
                if config.duration and now - started >= config.duration:
                    break
                if config.requests and n >= config.requests:
                    break
                # Schedule by the clock, not by sleeps, so the rate holds over time.
                await asyncio.sleep(max(0.0, started + n * interval - now))
                model = picker.pick() if picker else None
                if model is not None:
                    result.by_model[model] += 1
                task = asyncio.create_task(guarded(next(samples), model))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                result.sent += 1
                if progress is not None and time.monotonic() >= next_report:
                    _progress(result, started, progress)
                    next_report += report_every
            if tasks:
                await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise
        finally:
            result.elapsed = time.monotonic() - started
    if progress is not None:
        _progress(result, started, progress, final=True)
    return result
