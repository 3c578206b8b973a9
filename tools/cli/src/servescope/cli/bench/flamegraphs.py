"""`servescope bench --flamegraphs DIR`: where the services' CPU goes under load (issue 16).

One local stack per configuration (runner.CONFIGS), driven by wrk at c=8 while py-spy
records each of the three services for the same seconds. py-spy is run with
`uv tool run`, so it never becomes a workspace dependency. Written per service:
DIR/<label>-<config>-<service>.svg (py-spy's flame graph) and a .json beside it with the
share of samples spent in telemetry; DIR/shares.json gathers every label's shares.

The share is read back from the SVG itself (inferno writes each frame's exact sample
offset and width as fg:x and fg:w), so the picture and the number come from one recording.
A sample counts as telemetry when, walking from its innermost frame outwards, the first
frame that is either telemetry or the application is telemetry: so the standard library
and third-party code telemetry calls (json, logging, threading, an HTTP client) count,
while whatever runs inside the middleware's call to the app (routing, the handlers,
uvicorn writing the response the middleware's counting wrapper passes on) does not.

To profile other code without reinstalling (the "before" of a change), put its sources
first on PYTHONPATH: the services inherit this process's environment.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from servescope.cli.bench.runner import CONFIGS, WRK_SCRIPT, _Sink, _wrk
from servescope.cli.local.services import SERVICES, LocalStack, free_port
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples

PY_SPY_VERSION = "0.4.3"
CONNECTIONS = 8
RATE = 250
UV_HINT = (
    "uv is not installed, and py-spy is run with `uv tool run` (never a workspace "
    "dependency): install uv (https://docs.astral.sh/uv/, e.g. `pip install uv`)"
)

# Telemetry: the instrumentation libraries and our own telemetry package.
TELEMETRY = re.compile(r"(^|[/(])(opentelemetry|prometheus_client|structlog|servescope/telemetry)/")
# The application: the services, the runtime, the web framework and server. (The middleware's
# counting_receive/counting_send are telemetry's; the uvicorn they hand messages to is not.)
APPLICATION = re.compile(r"(^|[/(])(servescope/(?!telemetry/)|starlette/|fastapi/|uvicorn/)")


def classify(frame: str) -> str:
    """'telemetry', 'app' or '' (neither: the standard library, other third-party code)."""
    if TELEMETRY.search(frame):
        return "telemetry"
    if APPLICATION.search(frame):
        return "app"
    return ""


def is_telemetry(stack: list[str]) -> bool:
    """Whether a sample (frames outermost first) is telemetry's: see the module docstring."""
    for frame in reversed(stack):
        kind = classify(frame)
        if kind:
            return kind == "telemetry"
    return False


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """Collapsed stacks ("outer;inner 12" a line, py-spy's --format raw) as (frames, count)."""
    stacks = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        frames, _, count = line.rpartition(" ")
        stacks.append((frames.split(";"), int(count)))
    return stacks


@dataclass
class Share:
    samples: int
    telemetry: int
    # Telemetry frames by the samples that pass through them (a frame counted once a sample).
    top: list[tuple[str, int]]

    @property
    def percent(self) -> float:
        return 100.0 * self.telemetry / self.samples if self.samples else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "telemetry_samples": self.telemetry,
            "telemetry_percent": round(self.percent, 2),
            "top_telemetry_frames": [{"frame": f, "samples": n} for f, n in self.top],
        }


# Where a file lives on this machine: a virtual environment's site-packages, a member's src/,
# the standard library.
_PREFIX = re.compile(
    r"(?<=\()/[^ ()]*?/(?:lib/python3\.\d+/site-packages|src|lib/python3\.\d+)/(?=[A-Za-z_])"
)


def short(frame: str) -> str:
    """A frame without this machine's paths: "func (opentelemetry/sdk/trace/__init__.py)"."""
    return _PREFIX.sub("", frame)


_FRAME = re.compile(
    r"<g><title>(?P<title>[^<]*)</title>(?P<rect><rect [^>]*/>)"
    r"<text (?P<attrs>[^>]*)>(?P<label>[^<]*)</text></g>"
)
_SAMPLES = re.compile(r" \([\d,]+ samples?, [\d.]+%\)$")


def tidy_svg(svg: str, name: str) -> str:
    """py-spy's SVG without this machine's paths: in the frames' titles, in the labels drawn
    on them (refitted to the characters each label had) and in the command line shown."""

    def relabel(match: re.Match[str]) -> str:
        label = html.unescape(match["label"])
        title = html.unescape(match["title"])
        text = short(_SAMPLES.sub("", title))
        if label.endswith("..") and len(text) > len(label):
            text = text[: max(len(label) - 2, 0)] + ".." if len(label) > 2 else ""
        elif not label:
            text = ""
        return (
            f"<g><title>{escape(short(title))}</title>{match['rect']}"
            f"<text {match['attrs']}>{escape(text)}</text></g>"
        )

    svg = _FRAME.sub(relabel, svg)
    return re.sub(r"-o \S+\.svg", f"-o {name}", short(svg))


def telemetry_share(stacks: Iterable[tuple[list[str], int]], top: int = 12) -> Share:
    total = telemetry = 0
    frames: Counter[str] = Counter()
    for stack, count in stacks:
        total += count
        if is_telemetry(stack):
            telemetry += count
            for frame in {short(f) for f in stack if classify(f) == "telemetry"}:
                frames[frame] += count
    return Share(total, telemetry, frames.most_common(top))


def stacks_from_svg(svg: str) -> list[tuple[list[str], int]]:
    """The collapsed stacks behind an inferno flame graph (py-spy's SVG), from its frames'
    fg:x/fg:w sample counts and their rows. A frame too narrow to draw is not in the SVG:
    its samples count as its parent's own."""
    root = ET.fromstring(svg)  # noqa: S314 (py-spy's own output, written here)
    frames: list[tuple[float, int, int, str]] = []  # (y, x, w, name)
    for g in root.iter("{http://www.w3.org/2000/svg}g"):
        title = g.find("{http://www.w3.org/2000/svg}title")
        rect = g.find("{http://www.w3.org/2000/svg}rect")
        if title is None or rect is None or title.text is None:
            continue
        fg_x = rect.get("{http://github.com/jonhoo/inferno}x") or rect.get("fg:x")
        fg_w = rect.get("{http://github.com/jonhoo/inferno}w") or rect.get("fg:w")
        if fg_x is None or fg_w is None:
            continue
        name = _SAMPLES.sub("", title.text)
        frames.append((float(rect.get("y", "0")), int(fg_x), int(fg_w), name))
    if not frames:
        return []
    # py-spy draws icicles (inverted: the outermost frames at the top); flame graphs the reverse.
    inverted = re.search(r"var inverted = true", svg) is not None
    rows = sorted({y for y, *_ in frames}, reverse=not inverted)
    depth = {y: i for i, y in enumerate(rows)}
    by_depth: dict[int, list[tuple[int, int, str]]] = {}
    for y, x, w, name in frames:
        by_depth.setdefault(depth[y], []).append((x, w, name))
    for row in by_depth.values():
        row.sort()
    stacks: list[tuple[list[str], int]] = []

    def walk(d: int, x: int, w: int, path: list[str]) -> None:
        inner = [f for f in by_depth.get(d + 1, []) if x <= f[0] and f[0] + f[1] <= x + w]
        own = w - sum(f[1] for f in inner)
        if own > 0 and path:
            stacks.append((path, own))
        for cx, cw, cname in inner:
            walk(d + 1, cx, cw, [*path, cname])

    total = max(x + w for _, x, w, _ in frames)
    walk(-1, 0, total, [])
    return stacks


def _py_spy(version: str) -> list[str]:
    if shutil.which("uv") is None:
        raise RuntimeError(UV_HINT)
    return ["uv", "tool", "run", "--from", f"py-spy=={version}", "py-spy"]


def record(
    out_dir: Path,
    label: str,
    configs: Iterable[str] = ("default", "full"),
    seconds: int = 10,
    rate: int = RATE,
    py_spy_version: str = PY_SPY_VERSION,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Record every configuration's three services; returns {config: {service: share}}."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: sudo apt-get install wrk")
    configs = list(configs)
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise RuntimeError(f"unknown configuration(s) {unknown}; known: {list(CONFIGS)}")
    py_spy = _py_spy(py_spy_version)
    say(f"flamegraphs: fetching py-spy {py_spy_version} (uv tool run)")
    subprocess.run([*py_spy, "--version"], check=True, capture_output=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    sink = ThreadingHTTPServer(("127.0.0.1", free_port()), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    workdir = Path(tempfile.mkdtemp(prefix="servescope-flamegraphs-"))
    body = workdir / "digit.png"
    body.write_bytes(heldout_samples(heldout_dir())[0].body)
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT.format(content_type="image/png", body_path=body))
    common = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "SERVESCOPE_LOG_LEVEL": "info",
    }
    results: dict[str, Any] = {}
    try:
        for config in configs:
            stack = LocalStack(
                ports={svc: free_port() for svc in SERVICES},
                run_dir=workdir / config,
                env={"*": {**common, **CONFIGS[config]}},
            )
            stack.start(timeout=60)
            try:
                say(f"flamegraphs: {label}/{config} stack ready; warming up")
                url = stack.url + "/v1/predict"
                _wrk(url, script, CONNECTIONS, 2)
                results[config] = _record_stack(
                    stack, url, script, out_dir, label, config, seconds, rate, py_spy, say
                )
            finally:
                stack.stop()
    finally:
        sink.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    _merge_shares(out_dir / "shares.json", label, results, seconds, rate, py_spy_version)
    return results


def _record_stack(
    stack: LocalStack,
    url: str,
    script: Path,
    out_dir: Path,
    label: str,
    config: str,
    seconds: int,
    rate: int,
    py_spy: list[str],
    say: Callable[[str], None],
) -> dict[str, Any]:
    spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for service in SERVICES:
        svg = out_dir / f"{label}-{config}-{service}.svg"
        command = [
            *py_spy,
            "record",
            "--pid",
            str(stack.services[service].pid),
            "--duration",
            str(seconds),
            "--rate",
            str(rate),
            "--gil",
            "--nonblocking",
            "--full-filenames",  # telemetry and the app are told apart by their paths
            "--nolineno",  # a function one frame, not one a line: smaller and easier to read
            "--format",
            "flamegraph",
            "-o",
            str(svg),
        ]
        spies[service] = (
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
            svg,
        )
    time.sleep(0.5)  # py-spy attaches
    say(
        f"flamegraphs: {label}/{config} wrk c={CONNECTIONS} for {seconds + 2} s, py-spy {seconds} s"
    )
    stats, _ = _wrk(url, script, CONNECTIONS, seconds + 2)
    say(
        f"flamegraphs: {label}/{config} {stats['requests'] / stats['seconds']:.0f} rps, "
        f"{stats['errors']} errors"
    )
    shares: dict[str, Any] = {}
    for service, (spy, svg) in spies.items():
        output, _ = spy.communicate(timeout=60)
        if spy.returncode != 0 or not svg.exists():
            tail = output.decode(errors="replace")[-1500:]
            raise RuntimeError(f"py-spy failed on {service} ({spy.returncode}):\n{tail}")
        text = svg.read_text()
        share = telemetry_share(stacks_from_svg(text))
        svg.write_text(tidy_svg(text, svg.name))  # read with full paths, kept without
        entry = {
            "label": label,
            "config": config,
            "service": service,
            "rps": round(stats["requests"] / stats["seconds"], 1),
            **share.as_dict(),
        }
        svg.with_suffix(".json").write_text(json.dumps(entry, indent=2) + "\n")
        shares[service] = entry
        say(
            f"flamegraphs: {svg.name}: {svg.stat().st_size // 1024} KB, "
            f"telemetry {share.percent:.1f}% of {share.samples} samples"
        )
    return shares


def _merge_shares(
    path: Path, label: str, results: dict[str, Any], seconds: int, rate: int, version: str
) -> None:
    merged = json.loads(path.read_text()) if path.exists() else {}
    for config, by_service in results.items():
        merged.setdefault(label, {})[config] = {
            svc: entry["telemetry_percent"] for svc, entry in by_service.items()
        }
    merged.setdefault("_method", {})[label] = (
        f"py-spy {version} record --rate {rate} --gil --nonblocking --full-filenames "
        f"--nolineno, {seconds} s per service under wrk c={CONNECTIONS}"
    )
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
