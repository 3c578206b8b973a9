"""`servescope bench --flamegraphs`: telemetry's share of a profile, on tiny synthetic stacks
(collapsed text and the inferno SVG py-spy writes). The real recording is not in make test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from servescope.cli import main as cli
from servescope.cli.bench import flamegraphs
from servescope.cli.bench.flamegraphs import (
    classify,
    parse_collapsed,
    short,
    stacks_from_svg,
    telemetry_share,
    tidy_svg,
)

SITE = "/v/lib/python3.11/site-packages"
SRC = "/repo/services"
MIDDLEWARE = (
    f"HTTPTelemetryMiddleware.__call__ ({SRC}/telemetry/src/servescope/telemetry/middleware.py)"
)
SEND = f"counting_send ({SRC}/telemetry/src/servescope/telemetry/middleware.py)"
UVICORN = f"run_asgi ({SITE}/uvicorn/protocols/http/httptools_impl.py)"
ROUTER = f"Router.__call__ ({SITE}/starlette/routing.py)"
HANDLER = f"predict ({SRC}/preprocess/src/servescope/preprocess/app.py)"

# Outermost frame first; counts are samples.
COLLAPSED = "\n".join(
    [
        # the middleware's own work and what it calls (a histogram, json in the encoder): telemetry
        f"{UVICORN};{MIDDLEWARE} 10",
        f"{UVICORN};{MIDDLEWARE};observe ({SITE}/prometheus_client/metrics.py) 5",
        f"worker ({SITE}/opentelemetry/sdk/trace/export/__init__.py);dumps (/py/json/__init__.py) 3",
        # the app inside the middleware's call: not telemetry, however deep
        f"{UVICORN};{MIDDLEWARE};{ROUTER};{HANDLER};resize (/site/PIL/Image.py) 40",
        # a span the handler starts: telemetry again
        f"{UVICORN};{MIDDLEWARE};{ROUTER};{HANDLER};start_span ({SITE}/opentelemetry/trace/__init__.py) 2",
        # uvicorn writing the response the middleware's counting wrapper passes on: the app's;
        # the wrapper's own counting: telemetry
        f"{UVICORN};{MIDDLEWARE};{ROUTER};{SEND};send ({SITE}/uvicorn/protocols/http/h11_impl.py) 6",
        f"{UVICORN};{MIDDLEWARE};{ROUTER};{SEND} 1",
        # a log line from the handler, down to the standard library's lock: telemetry
        f"{HANDLER};info ({SITE}/structlog/_native.py);acquire (/py/threading.py) 4",
        # the event loop alone: neither
        "_run_once (/py/asyncio/base_events.py) 29",
    ]
)


def test_share_counts_telemetry_and_what_it_calls_but_not_the_app_it_wraps() -> None:
    share = telemetry_share(parse_collapsed(COLLAPSED))
    assert share.samples == 100
    assert share.telemetry == 10 + 5 + 3 + 2 + 1 + 4
    assert share.percent == pytest.approx(25.0)
    top = dict(share.top)
    assert top["HTTPTelemetryMiddleware.__call__ (servescope/telemetry/middleware.py)"] == 18


def test_classify_tells_telemetry_from_the_app_by_path() -> None:
    assert classify(MIDDLEWARE) == "telemetry"
    assert classify(SEND) == "telemetry"
    assert classify(UVICORN) == "app"
    assert classify(HANDLER) == "app"
    assert classify(f"f ({SITE}/structlog/_base.py)") == "telemetry"
    assert classify("dumps (/py/json/__init__.py)") == ""
    # a service named like a telemetry library is not one
    assert classify(f"f ({SRC}/x/src/servescope/telemetryish/a.py)") == "app"


def test_short_drops_this_machines_paths() -> None:
    assert short(MIDDLEWARE) == (
        "HTTPTelemetryMiddleware.__call__ (servescope/telemetry/middleware.py)"
    )
    assert short("dumps (/py/json/__init__.py)") == "dumps (/py/json/__init__.py)"
    assert short("dumps (/u/lib/python3.11/json/__init__.py)") == "dumps (json/__init__.py)"
    assert short(f"f ({SITE}/structlog/_base.py)") == "f (structlog/_base.py)"


def _svg(frames: list[tuple[int, int, int, str]], inverted: bool) -> str:
    """An inferno-like SVG: (depth, fg:x, fg:w, name) a frame."""
    rows = [
        f'<g><title>{name} ({w} samples, 1.00%)</title><rect x="0%" '
        f'y="{100 + 16 * d if inverted else 500 - 16 * d}" width="1%" height="15" '
        f'fg:x="{x}" fg:w="{w}"/><text x="0" y="0"></text></g>'
        for d, x, w, name in frames
    ]
    return (
        '<?xml version="1.0" standalone="no"?><svg version="1.1" '
        'xmlns="http://www.w3.org/2000/svg" xmlns:fg="http://github.com/jonhoo/inferno">'
        f"<script><![CDATA[var inverted = {'true' if inverted else 'false'};]]></script>"
        f'<svg id="frames">{"".join(rows)}</svg></svg>'
    )


@pytest.mark.parametrize("inverted", [True, False])
def test_stacks_from_svg_rebuild_the_collapsed_stacks(inverted: bool) -> None:
    frames = [
        (0, 0, 50, UVICORN),
        (1, 0, 45, MIDDLEWARE),
        (2, 0, 30, ROUTER),
        (3, 0, 30, HANDLER),
        (2, 30, 5, f"observe ({SITE}/prometheus_client/metrics.py)"),
        (0, 50, 50, "_run_once (/py/asyncio/base_events.py)"),
    ]
    stacks = sorted((";".join(s), n) for s, n in stacks_from_svg(_svg(frames, inverted)))
    assert stacks == sorted(
        [
            (UVICORN, 5),
            (f"{UVICORN};{MIDDLEWARE}", 10),
            (f"{UVICORN};{MIDDLEWARE};{ROUTER};{HANDLER}", 30),
            (f"{UVICORN};{MIDDLEWARE};observe ({SITE}/prometheus_client/metrics.py)", 5),
            ("_run_once (/py/asyncio/base_events.py)", 50),
        ]
    )
    assert telemetry_share(stacks_from_svg(_svg(frames, inverted))).telemetry == 15


def test_bench_flamegraphs_option_records_instead_of_benching(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(flamegraphs, "record", lambda *a, **k: calls.append(a) or {})
    args = cli.build_parser().parse_args(
        ["bench", "--flamegraphs", str(tmp_path), "--label", "before", "--duration", "3"]
    )
    assert args.func(args) == 0
    assert calls == [(tmp_path, "before", ["default", "full"], 3)]


def test_tidy_svg_drops_paths_from_titles_labels_and_the_command() -> None:
    frame = (
        f"<g><title>{MIDDLEWARE} (3 samples, 1.00%)</title>"
        '<rect x="0%" y="1" width="1%" height="15" fg:x="0" fg:w="3"/>'
        '<text x="0" y="0">HTTPTelemetryMiddleware.__call__ (/repo/servi..</text></g>'
    )
    svg = f'<svg><text id="subtitle">py-spy record -o /tmp/x/a.svg</text>{frame}</svg>'
    tidy = tidy_svg(svg, "a.svg")
    assert "/repo" not in tidy and "/tmp" not in tidy
    assert "py-spy record -o a.svg" in tidy
    assert "<title>HTTPTelemetryMiddleware.__call__ (servescope/telemetry/middleware.py) (3" in tidy
    # the label keeps the width it had: 47 characters, ".." included
    assert ">HTTPTelemetryMiddleware.__call__ (servescope/..</text>" in tidy
