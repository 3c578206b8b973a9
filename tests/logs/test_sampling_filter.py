"""deploy/fluent-bit/sampling.lua in real LuaJIT over real log lines from the services' logging.

The lines come from the services' own logging configuration (log_source.py: structlog JSON,
the services' INFO sampler, OpenTelemetry trace ids) and reach the filter as Fluent Bit hands
them over (the JSON fields merged into the record, plus `stream` and `kubernetes`), through
the log-sampling lab's harness (labs/advanced/02-log-sampling-filter/harness.lua), which
calls the filter's function the way Fluent Bit does and reports each answer.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from servescope.telemetry.settings import TelemetrySettings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "fluent-bit" / "sampling.lua"
LAB = ROOT / "labs" / "advanced" / "02-log-sampling-filter"
HARNESS = LAB / "harness.lua"
SOURCE = Path(__file__).with_name("log_source.py")
TRACES = 3000
REAL_REQUESTS = 600
RATIO = 0.1
SAMPLED = ("debug", "info")
Item = tuple[str, float, dict[str, Any]]

LUAJIT = shutil.which("luajit")
if LUAJIT is None:  # the filter's test is the product's proof: never skipped
    raise RuntimeError("these tests need `luajit` (apt-get install luajit; .ci/run installs it)")


@functools.cache
def _lab_checker() -> ModuleType:
    """The lab's checker, for its record writer (Python values to Lua table constructors)."""
    spec = importlib.util.spec_from_file_location("log_sampling_check", LAB / "check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def service_lines(info_ratio: float) -> tuple[str, ...]:
    """The JSON lines the services' logging prints for TRACES traces at `info_ratio`."""
    run = subprocess.run(
        [sys.executable, str(SOURCE), str(TRACES), str(info_ratio)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return tuple(run.stdout.splitlines())


def as_fluent_bit_records(lines: tuple[str, ...]) -> list[Item]:
    """Each JSON line as Fluent Bit's kubernetes filter hands it to a Lua filter."""
    items: list[Item] = []
    for number, line in enumerate(lines):
        record = json.loads(line)
        record["stream"] = "stdout"
        record["kubernetes"] = {
            "namespace_name": "servescope",
            "pod_name": "servescope-preprocess-7c9d5b8f6-x2kqp",
            "container_name": "preprocess",
            "labels": {"app.kubernetes.io/name": "servescope"},
        }
        items.append(("kube.var.log.containers.preprocess.log", 1_796_112_000.0 + number, record))
    return items


def run_filter(
    items: list[Item], tmp_path: Path, function: str = "sample", ratio: str | None = None
) -> list[bool]:
    """The filter's answer for each record: True kept, False dropped; asserts it only decides
    (codes 0 or -1, the timestamp and record handed back unchanged, no error)."""
    records, results = tmp_path / f"{function}.records", tmp_path / f"{function}.results"
    _lab_checker().write_records(records, items)
    env = {k: v for k, v in os.environ.items() if k != "SERVESCOPE_LOG_INFO_SAMPLE_RATIO"}
    if ratio is not None:
        env["SERVESCOPE_LOG_INFO_SAMPLE_RATIO"] = ratio
    assert LUAJIT is not None
    run = subprocess.run(
        [LUAJIT, str(HARNESS), str(SCRIPT), str(records), str(results), function],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    answers = results.read_text().splitlines()
    assert len(answers) == len(items)
    kept = []
    for answer in answers:
        status, code, same_ts, same_record = answer.split("\t")
        assert (status, same_ts, same_record) == ("OK", "1", "1"), answer
        assert code in ("0", "-1"), answer
        kept.append(code == "0")
    return kept


def otel_samples(trace_id: str, ratio: float = RATIO) -> bool:
    """OpenTelemetry's own TraceIdRatioBased sampler's decision for this trace id."""
    result = TraceIdRatioBased(ratio).should_sample(None, int(trace_id, 16), "POST /v1/predict")
    return result.decision.is_sampled()


def line_hash(record: dict[str, Any]) -> int:
    """The filter's hash of a line without a trace id, computed independently: FNV-1a 64 of
    timestamp, service, event and logger (newline-separated), then MurmurHash3's fmix64."""
    key = "\n".join(str(record.get(k, "")) for k in ("timestamp", "service", "event", "logger"))
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for byte in key.encode():
        h = ((h ^ byte) * 0x100000001B3) & mask
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h = ((h ^ (h >> 33)) * multiplier) & mask
    return h ^ (h >> 33)


def test_every_warning_kept_info_sampled_per_trace_as_opentelemetry_decides(tmp_path):
    items = as_fluent_bit_records(service_lines(1.0))  # the services keep every line
    kept = run_filter(items, tmp_path)

    by_level: Counter[tuple[str, bool]] = Counter()
    traces: dict[str, set[bool]] = defaultdict(set)
    untraced: list[tuple[dict[str, Any], bool]] = []
    for (_, _, record), decision in zip(items, kept, strict=True):
        level = record["level"]
        by_level[level, decision] += 1
        if level not in SAMPLED:
            continue
        if "trace_id" in record:
            traces[record["trace_id"]].add(decision)
        else:
            untraced.append((record, decision))

    # 100% of WARNING and ERROR lines (inside and outside traces) kept.
    for level in ("warning", "error"):
        assert by_level[level, True] > 50 and by_level[level, False] == 0, by_level
    # INFO and DEBUG inside traces: one decision per trace, OpenTelemetry's, at 10% +- 3%.
    assert len(traces) >= 2000
    assert all(len(decisions) == 1 for decisions in traces.values())
    decided = {trace_id: decisions.pop() for trace_id, decisions in traces.items()}
    wrong = [t for t, keep in decided.items() if keep != otel_samples(t)]
    assert not wrong, f"{len(wrong)} traces decided unlike TraceIdRatioBased, e.g. {wrong[:3]}"
    share = sum(decided.values()) / len(decided)
    assert abs(share - RATIO) <= 0.03, share
    # Including the ids a unit either side of the bound, where doubles give the wrong answer.
    bound = TraceIdRatioBased.get_bound_for_rate(RATIO)
    edges = {
        int(t[16:], 16) - bound: keep
        for t, keep in decided.items()
        if abs(int(t[16:], 16) - bound) < 4
    }
    assert edges == {-2: True, -1: True, 0: False, 1: False}

    # Without a trace id: sampled at 10% by the filter's hash of the line.
    assert len(untraced) >= 3000
    assert all(keep == (line_hash(record) < bound) for record, keep in untraced)
    untraced_share = sum(keep for _, keep in untraced) / len(untraced)
    assert abs(untraced_share - RATIO) <= 0.03, untraced_share


def test_untraced_lines_get_the_same_answer_every_time(tmp_path):
    """Stable: the same line, shipped twice (a replay) or by another Fluent Bit, gets the
    same decision; the shipper's own fields (pod, stream) do not change it."""
    lines = [line for line in service_lines(1.0) if '"trace_id"' not in line][:600]
    first = as_fluent_bit_records(tuple(lines))
    again = as_fluent_bit_records(tuple(lines))
    for _, _, record in again:
        record["kubernetes"]["pod_name"] = "servescope-preprocess-7c9d5b8f6-other"
        record["stream"] = "stderr"
    kept = run_filter(first + again, tmp_path)
    assert kept[: len(first)] == kept[len(first) :]
    assert 0 < sum(kept[: len(first)]) < len(first)


def test_agrees_with_the_services_own_sampling(tmp_path):
    """The services already sample INFO at the source with the same rule at the same ratio:
    the lines they emit inside traces are exactly those of the traces the filter keeps, so
    it drops none of them (and sampling twice keeps 10% of traces, not 1%)."""
    at_source = as_fluent_bit_records(service_lines(RATIO))
    kept = run_filter(at_source, tmp_path)
    traced = [
        (record, keep)
        for (_, _, record), keep in zip(at_source, kept, strict=True)
        if "trace_id" in record and record["level"] in SAMPLED
    ]
    emitted = {record["trace_id"] for record, _ in traced}
    assert len(emitted) >= 0.07 * TRACES
    assert all(otel_samples(trace_id) for trace_id in emitted)
    assert all(keep for _, keep in traced)


def test_one_filter_instance_per_level_drops_only_its_level(tmp_path):
    """`sample_debug` and `sample_info` (one [FILTER] each, whose Alias names Fluent Bit's
    drop counter by level) together drop exactly what `sample` drops."""
    items = as_fluent_bit_records(service_lines(1.0)[:4000])
    every = run_filter(items, tmp_path)
    dropped = {}
    for level in SAMPLED:
        kept = run_filter(items, tmp_path, function=f"sample_{level}")
        dropped[level] = {i for i, keep in enumerate(kept) if not keep}
        assert all(items[i][2]["level"] == level for i in dropped[level])
    assert dropped["debug"] and dropped["info"]
    assert dropped["debug"] | dropped["info"] == {i for i, keep in enumerate(every) if not keep}


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 1e-17, 3 * 2.0**-65, 0.0, 1.0])
def test_the_ratio_comes_from_the_services_variable(tmp_path, ratio):
    """SERVESCOPE_LOG_INFO_SAMPLE_RATIO sets the ratio; the bound is round(ratio * 2**64)
    exactly as the SDK computes it (half to even), checked a unit either side."""
    bound = TraceIdRatioBased.get_bound_for_rate(ratio)
    ids = [f"{'ab' * 8}{low:016x}" for low in (bound - 1, bound, bound + 1) if 0 <= low < 2**64]
    ids += [f"{'cd' * 8}{low:016x}" for low in (0, 2**63, 2**64 - 1)]
    items: list[Item] = [
        ("kube.x", 1.0, {"level": "info", "event": "http_request", "trace_id": trace_id})
        for trace_id in ids
    ]
    kept = run_filter(items, tmp_path, ratio=repr(ratio))
    assert kept == [otel_samples(trace_id, ratio) for trace_id in ids]


def test_a_wrong_ratio_stops_the_filter_at_load(tmp_path):
    items: list[Item] = [("kube.x", 1.0, {"level": "info", "event": "x"})]
    with pytest.raises(AssertionError, match="must be a number from 0 to 1, got 10%"):
        run_filter(items, tmp_path, ratio="10%")


def test_default_ratio_is_the_services_and_the_script_survives_helm():
    text = SCRIPT.read_text()
    default = re.search(r"^local DEFAULT_RATIO = ([0-9.]+)$", text, re.MULTILINE)
    assert default is not None
    services = TelemetrySettings.model_fields["log_info_sample_ratio"].default
    assert float(default.group(1)) == services
    # The fluent-bit chart passes luaScripts through Helm's tpl.
    assert "{{" not in text


@pytest.mark.slow
def test_real_service_lines_and_the_services_own_decisions(start_stack, tmp_path):
    """Two real postprocess processes get the same requests, each in a trace of its own (W3C
    traceparent; ids next to the bound among them): one keeps every line (ratio 1.0), the
    other samples INFO itself at 10%. The filter, over the first one's log file, keeps the
    INFO lines of exactly the traces the second one kept, keeps every WARNING, and drops none
    of the second one's lines that carry a trace id. (The 10% +- 3% over 3,000 traces is the
    first test's: requests cost more time than log lines.)"""
    rng = random.Random(14)
    bound = TraceIdRatioBased.get_bound_for_rate(RATIO)
    trace_ids = [f"{rng.getrandbits(128):032x}" for _ in range(REAL_REQUESTS)]
    trace_ids += [f"{rng.getrandbits(64):016x}{bound + d:016x}" for d in (-2, -1, 0, 1)]
    bad = {trace_id for trace_id in trace_ids if rng.random() < 0.08}
    stacks = {
        ratio: start_stack(
            env={"postprocess": {"SERVESCOPE_LOG_INFO_SAMPLE_RATIO": ratio}},
            names=("postprocess",),
        )
        for ratio in ("1.0", str(RATIO))
    }

    async def send(url: str) -> None:
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
            gate = asyncio.Semaphore(8)

            async def one(trace_id: str) -> None:
                body = b"{" if trace_id in bad else b'{"model_name":"digits","logits":[1,2,3]}'
                headers = {"traceparent": f"00-{trace_id}-{rng.getrandbits(64) or 1:016x}-00"}
                async with gate:
                    response = await client.post("/v1/postprocess", content=body, headers=headers)
                assert response.status_code == (422 if trace_id in bad else 200)

            await asyncio.gather(*(one(trace_id) for trace_id in trace_ids))

    async def send_both() -> None:
        await asyncio.gather(
            *(send(f"http://127.0.0.1:{s.services['postprocess'].port}") for s in stacks.values())
        )

    asyncio.run(send_both())
    for stack in stacks.values():
        stack.stop(timeout=10)  # and the shutdown lines are written
    full, sampled = (
        tuple(
            line
            for line in stack.services["postprocess"].log_path.read_text().splitlines()
            if line.startswith("{")
        )
        for stack in stacks.values()
    )

    items = as_fluent_bit_records(full)
    kept = run_filter(items, tmp_path)
    traces: dict[str, set[bool]] = defaultdict(set)
    warnings = 0
    for (_, _, record), keep in zip(items, kept, strict=True):
        if record["level"] == "warning":
            warnings += 1
            assert keep, record
        elif record["level"] == "info" and "trace_id" in record:
            traces[record["trace_id"]].add(keep)
    assert warnings >= len(bad) > 0
    assert set(traces) == set(trace_ids)
    assert all(len(decisions) == 1 for decisions in traces.values())
    kept_traces = {trace_id for trace_id, decisions in traces.items() if True in decisions}
    assert kept_traces == {trace_id for trace_id in trace_ids if otel_samples(trace_id)}
    assert 0 < len(kept_traces) < len(trace_ids) / 5

    at_source = as_fluent_bit_records(sampled)
    source_traces = {
        r["trace_id"] for _, _, r in at_source if r["level"] == "info" and "trace_id" in r
    }
    assert source_traces == kept_traces
    for (_, _, record), keep in zip(at_source, run_filter(at_source, tmp_path), strict=True):
        assert keep or "trace_id" not in record, record
