"""Overload at four times capacity: the accepted requests stay within the configured timeout,
the rest are shed at once (503 with Retry-After, counted), and memory stays flat.

The pipeline runs for real (three processes on 127.0.0.1). The load generator shares the
machine's two cores with them, and a Python client cannot offer four times what the
services serve on their own CPU (about 290 requests/s here, measured with wrk): it would
take the cores the services need. So capacity is lowered to what a client can outrun, with
the runtime's own knobs: the classifier's inference is slowed by a delay fault (a slow
model, an asyncio sleep) and the edge takes at most LIMIT requests at once
(SERVESCOPE_MAX_CONCURRENT_REQUESTS). Capacity is then LIMIT / (delay + work), about
75 requests/s, bounded by admission and not by the cores the client uses.

At the services' own CPU bound (no delay fault, the same client here, runs of December
2026) the goals held with the edge's limit at 8 (p99 of the accepted 0.19 s and 1.2 s, no
5xx, shedding's own CPU halving what was served), and did not with the default of 64: 64
requests in flight already take all of the edge's CPU, its event loop becomes the queue,
shed answers wait in it too, and some requests timed out (p99 9.7 s and 10 s, a few 504s).

The test measures that capacity first (a closed loop of LIMIT clients, a few seconds), then
sends an open-loop arrival rate of FACTOR times it for OVERLOAD_SECONDS: each request at its
scheduled time, whatever the answers before it, so a slow server cannot slow the arrivals
down. It samples the services' resident memory from /proc every second.

"The configured timeout" is the edge's budget for one inference, preprocess's
`classifier_timeout_seconds` (2 s by default: the whole call to the classifier, connect
included, after which the edge answers 504). It is the tightest of the edge's downstream
budgets a prediction must fit; the edge's worst case is that plus
`postprocess_timeout_seconds` (1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from servescope.cli.local.services import SERVICES, LocalStack
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples
from servescope.preprocess.settings import Settings as EdgeSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

LIMIT = 8  # the edge's SERVESCOPE_MAX_CONCURRENT_REQUESTS here
DELAY_SECONDS = 0.1  # the classifier's inference, slowed
FACTOR = 4
CAPACITY_SECONDS = 3.0
OVERLOAD_SECONDS = 18.0
WARMUP_SECONDS = 3.0  # memory samples before this are the services settling, not a trend
# Below this the client, not the edge, was the limit, and the run says nothing about 4x.
MIN_OFFERED_FACTOR = 3.0
# Resident memory may move this much between the first and last third of the run: far more
# than the noise measured here (under 0.1 MiB), far less than an unbounded queue adds. A
# request waiting at the edge holds about 11 KiB (measured without admission); at 4x a
# queue keeps three of every four arrivals, over 2 MiB a second here, and any leak of half
# a MiB a second breaks the bound (test_the_memory_check_catches_a_queue_that_grows).
RSS_GROWTH_RATIO = 0.05
RSS_GROWTH_FLOOR_BYTES = 4 * 1024 * 1024

CONFIGURED_TIMEOUT = EdgeSettings.model_fields["classifier_timeout_seconds"].default


@dataclass
class Answer:
    status: int | str  # an HTTP status, or the name of the exception that got none
    seconds: float  # from the moment the request was sent
    lag: float  # how late the client sent it after its scheduled time
    retry_after: str | None = None
    kind: str | None = None


@dataclass
class Run:
    answers: list[Answer] = field(default_factory=list)
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # name: (t, bytes)
    offered_per_second: float = 0.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def memory_growth(samples: list[int]) -> tuple[int, int]:
    """(growth in bytes, allowed growth): the median of the last third of the samples less
    the median of the first third, and the bound RSS_GROWTH_* put on it."""
    third = max(1, len(samples) // 3)
    first = statistics.median(samples[:third])
    last = statistics.median(samples[-third:])
    allowed = max(RSS_GROWTH_RATIO * first, RSS_GROWTH_FLOOR_BYTES)
    return int(last - first), int(allowed)


def memory_is_flat(samples: list[int]) -> bool:
    growth, allowed = memory_growth(samples)
    return growth <= allowed


def shed_total(url: str) -> float:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "servescope_requests_shed":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    raise AssertionError("servescope_requests_shed_total is not exposed")


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, scheduled: float, answers: list[Answer]
) -> None:
    sent = time.monotonic()
    try:
        async with session.post(url, data=body, headers={"content-type": "image/png"}) as r:
            data = await r.read()
            kind = None
            if r.status != 200:
                try:
                    kind = orjson.loads(data).get("kind")
                except orjson.JSONDecodeError:
                    kind = data[:100].decode(errors="replace")
            answers.append(
                Answer(
                    r.status,
                    time.monotonic() - sent,
                    sent - scheduled,
                    r.headers.get("retry-after"),
                    kind,
                )
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        answers.append(Answer(type(exc).__name__, time.monotonic() - sent, sent - scheduled))


async def _capacity(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    """Answers 200 a second with LIMIT clients each sending as soon as it has its answer."""
    answers: list[Answer] = []
    stop = time.monotonic() + CAPACITY_SECONDS

    async def client() -> None:
        while time.monotonic() < stop:
            await _post(session, url, body, time.monotonic(), answers)

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(LIMIT)))
    return sum(a.status == 200 for a in answers) / (time.monotonic() - started)


async def _sample_memory(pids: dict[str, int], run: Run, stop: asyncio.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        for name, pid in pids.items():
            run.rss.setdefault(name, []).append((time.monotonic() - started, rss_bytes(pid)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


async def _overload(url: str, body: bytes, pids: dict[str, int]) -> tuple[float, Run]:
    run = Run()
    # Enough connections that the pool never queues a request the schedule has sent: shed
    # answers come back in about a millisecond, the accepted ones in DELAY_SECONDS.
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        capacity = await _capacity(session, url, body)
        rate = FACTOR * capacity
        total = int(rate * OVERLOAD_SECONDS)
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_memory(pids, run, stop))
        tasks = []
        started = time.monotonic()
        for n in range(total):
            scheduled = started + n / rate
            # By the clock, not by sleeps, so the rate holds even when a sleep overshoots.
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            tasks.append(asyncio.create_task(_post(session, url, body, scheduled, run.answers)))
        sending = time.monotonic() - started
        run.offered_per_second = total / sending
        await asyncio.gather(*tasks)
        stop.set()
        await sampler
    return capacity, run


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def test_four_times_capacity_sheds_the_excess_and_keeps_the_rest_fast(start_stack) -> None:
    stack: LocalStack = start_stack(
        env={
            "classifier": {"SERVESCOPE_FAULTS": f"delay:infer:{DELAY_SECONDS}"},
            "preprocess": {"SERVESCOPE_MAX_CONCURRENT_REQUESTS": str(LIMIT)},
        }
    )
    pids = {name: stack.services[name].pid for name in SERVICES}
    assert all(pids.values())
    body = heldout_samples(heldout_dir())[0].body
    shed_before = shed_total(stack.url)

    capacity, run = asyncio.run(
        _overload(stack.url + "/v1/predict", body, {k: v for k, v in pids.items() if v})
    )

    shed_counted = shed_total(stack.url) - shed_before
    ok = [a for a in run.answers if a.status == 200]
    shed = [a for a in run.answers if a.status == 503]
    other = [a for a in run.answers if a.status not in (200, 503)]
    p99 = _p99([a.seconds for a in ok])
    lags = sorted(a.lag for a in run.answers)
    growth = {
        name: memory_growth([b for t, b in samples if t >= WARMUP_SECONDS])
        for name, samples in run.rss.items()
    }
    print(
        f"\ncapacity {capacity:.1f}/s; offered {run.offered_per_second:.1f}/s "
        f"({run.offered_per_second / capacity:.2f}x) for {OVERLOAD_SECONDS:.0f} s: "
        f"{len(run.answers)} sent, {len(ok)} answered 200 ({len(ok) / OVERLOAD_SECONDS:.1f}/s), "
        f"{len(shed)} shed (counted {shed_counted:.0f}), {len(other)} other; "
        f"accepted p50 {statistics.median(a.seconds for a in ok) * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms (timeout {CONFIGURED_TIMEOUT:.1f} s); shed p99 "
        f"{_p99([a.seconds for a in shed]) * 1000:.1f} ms; client lag p99 "
        f"{_p99(lags) * 1000:.1f} ms"
    )
    for name, (grew, allowed) in growth.items():
        rss = [b for t, b in run.rss[name] if t >= WARMUP_SECONDS]
        print(
            f"{name}: RSS {min(rss) / 2**20:.1f}-{max(rss) / 2**20:.1f} MiB over "
            f"{len(rss)} samples, last third vs first {grew / 2**20:+.2f} MiB "
            f"(allowed {allowed / 2**20:.1f})"
        )

    assert run.offered_per_second >= MIN_OFFERED_FACTOR * capacity, (
        "the client could not offer enough load to overload the edge; the run proves nothing"
    )
    assert not other, other[:5]
    # Not a goal, a guard that the p99 is of real traffic: on a busy machine the shed requests'
    # own cost and the client's take CPU from the accepted ones (64% of capacity was seen).
    assert len(ok) >= capacity * OVERLOAD_SECONDS * 0.3, "the edge stopped serving under load"
    assert p99 <= CONFIGURED_TIMEOUT
    assert shed, "nothing was shed at four times capacity"
    assert all(a.retry_after == "1" and a.kind == "overloaded" for a in shed), shed[:5]
    assert shed_counted == len(shed)
    for name, (grew, allowed) in growth.items():
        assert grew <= allowed, f"{name}'s memory grew {grew / 2**20:.1f} MiB under overload"
    assert all(stack.services[name].running() for name in SERVICES)


def test_the_memory_check_catches_a_queue_that_grows() -> None:
    """The flatness bound holds on noise and a cache filled once, and fails on an unbounded
    queue at the edge (about 11 KiB per waiting request, three of every four of ~70 arrivals
    a second kept) and on a leak a quarter of that size, over the samples the test takes."""
    mib = 2**20
    samples = int(OVERLOAD_SECONDS - WARMUP_SECONDS) + 1
    steady = [97 * mib + (i % 3) * mib // 4 for i in range(samples)]
    assert memory_is_flat(steady)
    one_step = [97 * mib] * 3 + [100 * mib] * (samples - 3)
    assert memory_is_flat(one_step)
    queued_per_second = 11 * 1024 * 3 * 70
    for per_second in (queued_per_second, queued_per_second // 4):
        leaking = [97 * mib + i * per_second for i in range(samples)]
        assert not memory_is_flat(leaking), (per_second, memory_growth(leaking))
