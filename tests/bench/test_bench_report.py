"""`servescope bench`: the report and plot from a synthetic run, and peers and the recipe
(issue 16) that fail to install.

Fast and offline: nothing here starts a server or reaches a package index.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from servescope.cli.bench import peers as bench_peers
from servescope.cli.bench import recipe as bench_recipe
from servescope.cli.bench import runner as bench
from servescope.cli.bench.peers import PeerInstall, PeerSpec, install_peer
from servescope.cli.bench.runner import Result, Sample, summarise, write_report

PIPELINE_CPU = {"preprocess": 0.9, "classifier": 0.6, "postprocess": 0.4}
SINGLES = {
    "classifier alone": 2000.0,
    "kserve default": 1000.0,
    "kserve quiet": 1600.0,
    "mlserver default": 500.0,
    "mlserver quiet": 1500.0,
}
PIPELINES = {"bare": 500.0, "floor": 485.0, "default": 470.0, "full": 400.0, "recipe": 300.0}
RECIPE_VERSIONS = {"prometheus-fastapi-instrumentator": "8.1.0", "structlog": "26.1.0"}


def _sample(rps: float, cpu: dict[str, float]) -> Sample:
    p50 = 1000 / rps
    return Sample(rps, p50, p50 * 1.5, p50 * 2, 0, cpu, 0.02)


def synthetic_report() -> dict[str, Any]:
    result = Result()
    for connections in (1, 8):
        for name, rps in PIPELINES.items():
            result.samples[(name, connections)] = [_sample(rps * f, PIPELINE_CPU) for f in (1, 1.1)]
        for name, rps in SINGLES.items():
            result.samples[(name, connections)] = [
                _sample(rps * f, {"server": 0.5}) for f in (1, 1.1)
            ]
    for name in PIPELINES:
        result.peak_rss_mib[name] = {svc: 80.0 for svc in PIPELINE_CPU}
    for name in SINGLES:
        result.peak_rss_mib[name] = {"server": 120.0}
    report = summarise(result, rounds=2, seconds=1.0)
    report["skipped"] = ["somepeer skipped: install failed (a test)"]
    report["peer_versions"] = {"kserve": "0.21.0", "mlserver": "1.7.1"}
    report["recipe_versions"] = RECIPE_VERSIONS
    report["inference"] = {"batch_1_us_per_image": 16.0, "batch_32_us_per_image": 5.0}
    return report


def test_report_and_plot_cover_every_configuration(tmp_path: Path) -> None:
    report = synthetic_report()
    write_report(report, tmp_path)
    doc = (tmp_path / "benchmarks.md").read_text()
    for name in (*PIPELINES, *SINGLES):
        assert f"| {name} | 1 |" in doc
        assert f"| {name} | 8 |" in doc
    # Ratios against bare, and the classifier alone against each peer configuration.
    for key in ("default/bare throughput c1", "full/bare throughput c8", "default/bare p95 c8"):
        assert f"| {key} |" in doc
    for peer in ("kserve default", "kserve quiet", "mlserver default", "mlserver quiet"):
        for c in ("c1", "c8"):
            key = f"classifier alone/{peer} throughput {c}"
            assert key in report["ratios"]
            assert f"| {key} | {report['ratios'][key]:.2f} |" in doc
    assert report["ratios"]["classifier alone/kserve default throughput c1"] == pytest.approx(2.0)
    assert "| classifier alone/kserve default throughput c1 | 2.00 | >= 2.00: met |" in doc
    assert "| classifier alone/kserve quiet throughput c1 | 1.25 | >= 1.30: **missed** |" in doc
    assert "| default/bare throughput c1 | 0.94 | >= 0.90: met |" in doc
    assert "| full/bare throughput c1 | 0.80 | >= 0.80: met |" in doc
    assert "| floor/bare throughput c1 | 0.97 |  |" in doc  # the floor is reported, no target
    assert "**floor** is the shipped telemetry with nothing sampled" in doc
    # Issue 16: the defaults against the recipe a user would copy instead, in the same run.
    assert report["ratios"]["default/recipe throughput c8"] == pytest.approx(470 / 300)
    assert "| default/recipe throughput c1 | 1.57 | >= 1.40: met |" in doc
    assert "| default/recipe throughput c8 | 1.57 | >= 1.40: met |" in doc
    assert "| recipe/bare throughput c1 | 0.60 |  |" in doc
    assert "| recipe | 80 | 80 | 80 |" in doc  # a pipeline's peak RSS row, per service
    assert "**recipe** is what a user would copy instead" in doc
    assert "Recipe versions: prometheus-fastapi-instrumentator 8.1.0, structlog 26.1.0." in doc
    assert "](benchmarks.png)" in doc
    assert "somepeer skipped: install failed (a test)" in doc
    png = (tmp_path / "benchmarks.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert json.loads((tmp_path / "benchmarks.json").read_text())["ratios"] == report["ratios"]


def test_a_missed_target_is_marked() -> None:
    verdict = bench._verdict(1.9, bench.target_of("classifier alone/kserve default throughput c8"))
    assert verdict == ">= 2.00: **missed**"
    assert "missed" in bench._verdict(1.3, bench.target_of("default/bare p95 c1"))
    verdict = bench._verdict(1.2, bench.target_of("default/recipe throughput c1"))
    assert verdict == ">= 1.40: **missed**"
    assert bench.target_of("recipe/bare throughput c1") is None


def test_the_recipe_is_left_out_of_the_ratios_when_it_was_not_measured() -> None:
    result = Result()
    for name in ("bare", "default"):
        result.samples[(name, 1)] = [_sample(PIPELINES[name], PIPELINE_CPU)]
    report = summarise(result, rounds=1, seconds=1.0)
    assert not any("recipe" in key for key in report["ratios"])
    assert "Recipe versions" not in bench.render({**report, "inference": {}})


def test_a_failed_peer_install_is_a_skip_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real (pip-less, so fast) venv in a temp dir; `false` stands in for pip installing an
    # impossible pin, so the failure path is exercised without reaching any package index.
    monkeypatch.setattr(bench_peers, "VENV_COMMAND", ("python3", "-m", "venv", "--without-pip"))
    spec = PeerSpec("nosuchpeer", ("servescope-no-such-package==0.0.0",))
    installed = install_peer(spec, root=tmp_path, pip_command=["false"])
    assert installed.venv is None
    assert installed.skipped.startswith("nosuchpeer skipped: install of")
    assert "servescope-no-such-package==0.0.0" in installed.skipped
    assert installed.skipped.endswith("failed (exit code 1)")
    assert str(tmp_path) not in installed.skipped  # no paths in what the doc shows
    # The half-built venv is removed, so the next run retries rather than trusting it.
    assert not any(p.is_dir() for p in tmp_path.iterdir())


def test_a_failed_recipe_install_is_a_skip_message(tmp_path: Path) -> None:
    # A real venv from this interpreter (uv's, or the venv module's: no index reached), then
    # `false` in place of the installer.
    installed = bench_recipe.install_recipe(cache=tmp_path, pip_command=["false"], timeout=120)
    assert installed.venv is None
    assert installed.skipped.startswith("recipe skipped: install of the services with ")
    assert "prometheus-fastapi-instrumentator==" in installed.skipped
    assert installed.skipped.endswith("failed (exit code 1)")
    assert str(tmp_path) not in installed.skipped
    assert not any(p.is_dir() for p in tmp_path.iterdir())


def test_bench_goes_on_when_the_recipe_fails(tmp_path: Path) -> None:
    said: list[str] = []

    def failing_install() -> bench_recipe.RecipeInstall:
        raise OSError("no network")

    stack, why, versions = bench.start_recipe(
        tmp_path, {}, install=failing_install, say=lambda message, **_: said.append(message)
    )
    assert (stack, versions) == (None, {})
    assert why == "recipe skipped: install raised OSError"
    stack, why, _ = bench.start_recipe(
        tmp_path,
        {},
        install=lambda: bench_recipe.RecipeInstall(skipped="recipe skipped: install failed"),
        say=lambda message, **_: said.append(message),
    )
    assert stack is None
    assert why == "recipe skipped: install failed"


def test_the_recipe_pins_its_packages_and_keeps_the_workspace_pins() -> None:
    assert all("==" in package for package in bench_recipe.PACKAGES)
    pins = bench_recipe.constraints()
    assert any(pin.startswith("fastapi==") for pin in pins)
    assert any(pin.startswith("structlog==") for pin in pins)
    assert not any(pin.startswith("opentelemetry-") for pin in pins)
    env = bench_recipe.environment()
    assert env["SERVESCOPE_TELEMETRY_ENABLED"] == "false"
    assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert float(env["OTEL_TRACES_SAMPLER_ARG"]) == 0.1


def test_the_cli_never_imports_the_recipe_app() -> None:
    """recipe_app needs packages only the recipe's venv has; the CLI must load without them."""
    code = (
        "import sys, servescope.cli.main, servescope.cli.bench.runner, "
        "servescope.cli.commands.bench; "
        "assert not [m for m in sys.modules if m.endswith('recipe_app')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bench_goes_on_when_every_peer_fails(tmp_path: Path) -> None:
    said: list[str] = []

    def failing_install(spec: PeerSpec) -> PeerInstall:
        if spec.name == "kserve":
            raise OSError("no network")
        return PeerInstall(spec, skipped=f"{spec.name} skipped: install failed")

    targets, servers, skipped, versions = bench.start_peers(
        tmp_path,
        tmp_path / "infer.lua",
        b"{}",
        install=failing_install,
        say=lambda message, **_: said.append(message),
    )
    assert (targets, servers, versions) == ({}, [], {})
    assert skipped == [
        "kserve skipped: install raised OSError",
        "mlserver skipped: install failed",
    ]
    assert any("mlserver skipped" in line for line in said)


def test_the_profile_explains_the_remainder_with_telemetrys_shares() -> None:
    report = synthetic_report()
    assert "## Where the rest of the cost is" in bench.render(report)  # without shares too
    report["profile"] = {
        "before": {"default": {"preprocess": 15.3}},
        "after": {"default": {"preprocess": 11.8}},
    }
    doc = bench.render(report)
    assert "[flame graphs](flamegraphs/README.md)" in doc
    assert "| default | preprocess | 15.3% | 11.8% |" in doc


def test_a_ratio_is_the_median_of_its_rounds_ratios() -> None:
    """Each round measures both configurations seconds apart; the machine's speed moves
    between rounds, so a ratio of medians taken over different rounds would mislead."""
    result = Result()
    cpu = dict.fromkeys(PIPELINE_CPU, 1.0)
    result.samples[("bare", 8)] = [_sample(rps, cpu) for rps in (500, 400, 300)]
    result.samples[("default", 8)] = [_sample(rps, cpu) for rps in (300, 380, 290)]
    ratios = summarise(result, rounds=3, seconds=1.0)["ratios"]
    # Round by round 0.60, 0.95, 0.97: the median 0.95 (the medians' ratio would be 0.75).
    assert ratios["default/bare throughput c8"] == pytest.approx(0.95)
