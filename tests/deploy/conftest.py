"""Render the chart with Helm's own engine: the `helm` CLI when it is on PATH, otherwise Helm's Go
SDK through the helm-python-sdk bindings (`helm_python`), which is what runs here and in CI.

Nothing is mocked: the objects the tests inspect are the ones Helm renders.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "servescope"
PROFILES = ROOT / "deploy" / "helm" / "profiles"
STACK = ROOT / "deploy" / "stack"
KUBE_VERSION = "1.32.0"
RELEASE = "servescope"
NAMESPACE = "servescope"
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule", "PodMonitor"}
# Rendering without a cluster (helm install --dry-run=client) reports only the built-in APIs,
# so the chart leaves out its ServiceMonitor and PrometheusRule (their CRDs come with the
# stack). Tests render "after `servescope stack install`" by default with this overlay, which
# tells the chart the CRDs exist; `render(..., crds=False)` renders what a bare cluster gets.
WITH_STACK_CRDS: dict[str, Any] = {"monitoring": {"assumeCRDs": True}}

# A fork's production values render only with a digest per image; these are made up.
PRODUCTION = (
    CHART / "examples" / "production-values.yaml",
    Path(__file__).with_name("production-digests.yaml"),
)

# Every values combination the tests render: the defaults, each ci/*.yaml, the production
# example, each skaffold profile's values file.
CASES: dict[str, tuple[Path, ...]] = {
    "default": (),
    **{f"ci/{p.name}": (p,) for p in sorted((CHART / "ci").glob("*.yaml"))},
    "examples/production-values.yaml": PRODUCTION,
    **{f"profile/{p.stem}": (p,) for p in sorted(PROFILES.glob("*.yaml"))},
}


@dataclass(frozen=True)
class Rendered:
    objects: tuple[dict[str, Any], ...]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert found, (
            f"no {kind} {name}; have {[o['metadata']['name'] for o in self.of_kind(kind)]}"
        )
        return found[0]


def merge_values(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of several -f files: maps merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_values(files: Iterable[Path], values: dict[str, Any] | None = None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in files:
        merged = merge_values(merged, yaml.safe_load(path.read_text()) or {})
    return merge_values(merged, values or {})


def _render_cli(helm: str, chart: Path, values: dict[str, Any]) -> tuple[str, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
        json.dump(values, handle)
        handle.flush()
        result = subprocess.run(
            [helm, "install", RELEASE, str(chart), "--dry-run=client", "--namespace", NAMESPACE,
             "--values", handle.name, "--output", "json"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        raise RenderError(result.stderr)
    release = json.loads(result.stdout)
    return release["manifest"], release.get("info", {}).get("notes", "")


def _render_sdk(chart: Path, values: dict[str, Any]) -> tuple[str, str]:
    import helm_python

    try:
        release = helm_python.Config(storage_driver="memory").install(
            str(chart), RELEASE, values, dry_run="client", namespace=NAMESPACE
        )
    except helm_python.HelmError as exc:
        raise RenderError(str(exc)) from exc
    return release["manifest"], release.get("notes") or ""


class RenderError(Exception):
    """Helm refused to render (schema violation, template `fail`, bad YAML)."""


def engine() -> str:
    return "helm CLI" if shutil.which("helm") else "helm-python-sdk"


def render_values(values: dict[str, Any], chart: Path = CHART) -> Rendered:
    helm = shutil.which("helm")
    manifest, notes = _render_cli(helm, chart, values) if helm else _render_sdk(chart, values)
    # safe_load_all parses the YAML for real: a bad indent fails here, not later.
    objects = tuple(d for d in yaml.safe_load_all(manifest) if d)
    return Rendered(objects, notes)


@functools.cache
def _render_cached(files: tuple[Path, ...], values_json: str, crds: bool) -> Rendered:
    base = WITH_STACK_CRDS if crds else {}
    return render_values(
        merge_values(load_values(files), merge_values(base, json.loads(values_json)))
    )


def render(
    files: Sequence[Path] = (), values: dict[str, Any] | None = None, *, crds: bool = True
) -> Rendered:
    """The chart rendered with `files` then `values`; `crds` says whether the cluster has the
    Prometheus Operator's CRDs (as after `servescope stack install`)."""
    return _render_cached(tuple(files), json.dumps(values or {}, sort_keys=True), crds)


def lint(values: dict[str, Any]) -> list[str]:
    """Strict lint; returns the findings of severity warning or error."""
    helm = shutil.which("helm")
    if helm:
        with tempfile.NamedTemporaryFile("w", suffix=".json") as handle:
            json.dump(values, handle)
            handle.flush()
            result = subprocess.run(
                [helm, "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION,
                 "--values", handle.name],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
        return [] if result.returncode == 0 else [result.stdout + result.stderr]
    import helm_python

    report = helm_python.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    findings = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return findings + list(report["errors"])


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def component_of(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


@pytest.fixture(params=sorted(CASES), ids=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, Rendered]:
    name: str = request.param
    return name, render(CASES[name])


class Helm:
    """What the test modules use (conftest helpers cannot be imported under importlib mode)."""

    ROOT = ROOT
    CHART = CHART
    PROFILES = PROFILES
    STACK = STACK
    CASES = CASES
    PRODUCTION = PRODUCTION
    KUBE_VERSION = KUBE_VERSION
    RELEASE = RELEASE
    NAMESPACE = NAMESPACE
    PROMETHEUS_OPERATOR_KINDS = PROMETHEUS_OPERATOR_KINDS
    WITH_STACK_CRDS = WITH_STACK_CRDS
    merge_values = staticmethod(merge_values)
    RenderError = RenderError
    render = staticmethod(render)
    render_values = staticmethod(render_values)
    load_values = staticmethod(load_values)
    lint = staticmethod(lint)
    engine = staticmethod(engine)
    containers = staticmethod(containers)
    env_of = staticmethod(env_of)
    component_of = staticmethod(component_of)


@pytest.fixture(scope="session")
def helm() -> type[Helm]:
    return Helm
