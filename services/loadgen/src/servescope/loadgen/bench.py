"""`servescope bench`: what telemetry costs, measured side by side in one run.

Every configuration runs as its own local stack at the same time (idle stacks cost next to
nothing), and the measurements are interleaved, round by round (bare, default, full, bare,
...), so drift in the machine's speed falls on all of them alike. Load comes from wrk, a
cheap generator in its own process, whose CPU is reported too. Reported: throughput,
latency percentiles, CPU milliseconds per request per service (from /proc) and peak RSS;
medians over rounds, and ratios against bare from the same run.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from servescope.loadgen.inputs import heldout_samples
from servescope.loadgen.local import SERVICES, LocalStack, free_port
from servescope.telemetry.settings import bundled_model_dir, repo_root

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# What each configuration changes; everything else is the shipped default.
CONFIGS: dict[str, dict[str, str]] = {
    "bare": {"SERVESCOPE_TELEMETRY_ENABLED": "false"},
    "default": {},
    "full": {"SERVESCOPE_TRACE_SAMPLE_RATIO": "1.0", "SERVESCOPE_LOG_INFO_SAMPLE_RATIO": "1.0"},
}

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "{content_type}"
local f = io.open("{body_path}", "rb")
wrk.body = f:read("*all")
f:close()
done = function(summary, latency, requests)
  io.write(string.format(
    "RESULT {{\\"requests\\": %d, \\"errors\\": %d, \\"seconds\\": %f, "
    .. "\\"p50\\": %f, \\"p95\\": %f, \\"p99\\": %f}}\\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout,
    summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""


class _Sink(BaseHTTPRequestHandler):
    """A local OTLP/HTTP endpoint that accepts and drops spans, so export costs are real."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_request: dict[str, float]
    loadgen_cpu_ms_per_request: float


@dataclass
class Result:
    samples: dict[tuple[str, int], list[Sample]] = field(default_factory=dict)
    peak_rss_mib: dict[str, dict[str, float]] = field(default_factory=dict)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wrk(url: str, script: Path, connections: int, seconds: float) -> tuple[dict[str, Any], float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT ")), cpu


def measure(
    stacks: dict[str, LocalStack], script: Path, connections: int, seconds: float
) -> dict[str, Sample]:
    samples = {}
    for name, stack in stacks.items():
        pids = {svc: stack.services[svc].pid for svc in SERVICES}
        before = {svc: _cpu_ticks(pid) for svc, pid in pids.items() if pid}
        stats, wrk_cpu = _wrk(stack.url + "/v1/predict", script, connections, seconds)
        after = {svc: _cpu_ticks(pid) for svc, pid in pids.items() if pid}
        count = max(stats["requests"], 1)
        samples[name] = Sample(
            rps=stats["requests"] / stats["seconds"],
            p50_ms=stats["p50"],
            p95_ms=stats["p95"],
            p99_ms=stats["p99"],
            errors=stats["errors"],
            cpu_ms_per_request={
                svc: (after[svc] - before[svc]) / CLOCK_TICKS * 1000 / count for svc in before
            },
            loadgen_cpu_ms_per_request=wrk_cpu * 1000 / count,
        )
    return samples


def floor() -> dict[str, float]:
    """In-process onnxruntime inference per image, batch 1 and 32 (microseconds)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(bundled_model_dir() / "digits-cnn.onnx"), options)
    result = {}
    for batch in (1, 32):
        x = np.random.default_rng(0).normal(size=(batch, 1, 8, 8)).astype(np.float32)
        for _ in range(200):
            session.run(None, {"input": x})
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(500):
                session.run(None, {"input": x})
            runs.append((time.perf_counter() - started) / 500 / batch * 1e6)
        result[f"batch_{batch}_us_per_image"] = statistics.median(runs)
    return result


def run_bench(rounds: int = 3, seconds: float = 5.0, out_dir: Path | None = None) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: sudo apt-get install wrk")
    out_dir = out_dir or repo_root() / "docs"
    sink = ThreadingHTTPServer(("127.0.0.1", free_port()), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    workdir = Path(tempfile.mkdtemp(prefix="servescope-bench-"))
    body = workdir / "digit.png"
    body.write_bytes(heldout_samples()[0].body)
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT.format(content_type="image/png", body_path=body))
    stacks: dict[str, LocalStack] = {}
    result = Result()
    try:
        for name, env in CONFIGS.items():
            common = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "SERVESCOPE_LOG_LEVEL": "info",
            }
            stacks[name] = LocalStack(
                ports={svc: free_port() for svc in SERVICES},
                run_dir=workdir / name,
                env={"*": {**common, **env}},
            )
            stacks[name].start()
            print(f"bench: {name} stack ready", flush=True)
        for connections in (1, 8):
            measure(stacks, script, connections, 1.0)  # warm-up: pools, caches, JIT-free paths
        for round_number in range(1, rounds + 1):
            for connections in (1, 8):
                for name, sample in measure(stacks, script, connections, seconds).items():
                    result.samples.setdefault((name, connections), []).append(sample)
                    print(
                        f"bench: round {round_number}/{rounds} c={connections} {name:8} "
                        f"{sample.rps:7.1f} rps  p95 {sample.p95_ms:6.2f} ms",
                        flush=True,
                    )
        for name, stack in stacks.items():
            result.peak_rss_mib[name] = {
                svc: _peak_rss_mib(stack.services[svc].pid or 0) for svc in SERVICES
            }
    finally:
        for stack in stacks.values():
            stack.stop()
        sink.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    report = summarise(result, rounds, seconds)
    report["floor"] = floor()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmarks.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "benchmarks.md").write_text(render(report))
    return report


def summarise(result: Result, rounds: int, seconds: float) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for (name, connections), samples in result.samples.items():
        entry = {
            "rps": statistics.median(s.rps for s in samples),
            "p50_ms": statistics.median(s.p50_ms for s in samples),
            "p95_ms": statistics.median(s.p95_ms for s in samples),
            "p99_ms": statistics.median(s.p99_ms for s in samples),
            "errors": sum(s.errors for s in samples),
            "cpu_ms_per_request": {
                svc: statistics.median(s.cpu_ms_per_request[svc] for s in samples)
                for svc in samples[0].cpu_ms_per_request
            },
            "loadgen_cpu_ms_per_request": statistics.median(
                s.loadgen_cpu_ms_per_request for s in samples
            ),
            "rounds_rps": [round(s.rps, 1) for s in samples],
        }
        table.setdefault(name, {})[f"c{connections}"] = entry
    ratios: dict[str, Any] = {}
    for name in ("default", "full"):
        for c in ("c1", "c8"):
            ratios[f"{name}/bare throughput {c}"] = table[name][c]["rps"] / table["bare"][c]["rps"]
            ratios[f"{name}/bare p95 {c}"] = table[name][c]["p95_ms"] / table["bare"][c]["p95_ms"]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "method": f"{rounds} interleaved rounds of {seconds:g} s per configuration and "
        "concurrency; medians; wrk -t1 on 127.0.0.1 posting one held-out 8x8 PNG",
        "configurations": table,
        "ratios": ratios,
        "peak_rss_mib": result.peak_rss_mib,
    }


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "<!-- Written by `make bench` (servescope bench); numbers from one run. -->",
        "",
        f"Run {report['date']} on {report['machine']}. {report['method']}.",
        "",
        "Configurations: **bare** is every service with `SERVESCOPE_TELEMETRY_ENABLED=false`;",
        "**default** is the shipped telemetry (metrics, parent-based traces at 10% exported over",
        "OTLP/HTTP to a local sink, INFO logs kept for 10% of traces); **full** samples every",
        "trace and keeps every log line.",
        "",
        "| configuration | c | rps | p50 ms | p95 ms | p99 ms | CPU ms/request (pre, cls, post) | wrk CPU ms/request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_c in report["configurations"].items():
        for c, entry in by_c.items():
            cpu = entry["cpu_ms_per_request"]
            lines.append(
                f"| {name} | {c[1:]} | {entry['rps']:.0f} | {entry['p50_ms']:.2f} | "
                f"{entry['p95_ms']:.2f} | {entry['p99_ms']:.2f} | "
                f"{cpu['preprocess']:.2f}, {cpu['classifier']:.2f}, {cpu['postprocess']:.2f} | "
                f"{entry['loadgen_cpu_ms_per_request']:.3f} |"
            )
    lines += ["", "## Ratios against bare (same run)", "", "| ratio | value |", "|---|---|"]
    for key, value in report["ratios"].items():
        lines.append(f"| {key} | {value:.2f} |")
    floor_ = report.get("floor", {})
    lines += [
        "",
        "## Floor: onnxruntime in process",
        "",
        f"- batch 1: {floor_.get('batch_1_us_per_image', 0):.1f} us per image",
        f"- batch 32: {floor_.get('batch_32_us_per_image', 0):.2f} us per image",
        "",
        "## Peak RSS (MiB)",
        "",
        "| configuration | preprocess | classifier | postprocess |",
        "|---|---|---|---|",
    ]
    for name, rss in report["peak_rss_mib"].items():
        lines.append(
            f"| {name} | {rss['preprocess']:.0f} | {rss['classifier']:.0f} | {rss['postprocess']:.0f} |"
        )
    return "\n".join(lines) + "\n"
