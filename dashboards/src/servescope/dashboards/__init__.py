"""Grafana dashboards as code.

One module per dashboard builds it with grafana-foundation-sdk's typed builders; `make
dashboards` (or `make generate`) writes the JSON to the top-level dashboards/ folder, which
Grafana loads (deploy/local/grafana for a local Grafana, the chart's ConfigMaps through the
symlink deploy/helm/servescope/files/dashboards on Kubernetes). A test fails when the
committed JSON differs from what this code generates.

This package is the workspace member `dashboards/` (dashboards/src/servescope/dashboards),
beside the JSON it generates, as kubernetes-mixin keeps its dashboards. It knows nothing of
where the repository is: the CLI passes the root in (`servescope dashboards`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

# File stem in dashboards/ -> module (in this package) whose build() returns the dashboard.
DASHBOARDS: dict[str, str] = {
    "servescope-overview": "overview",
    "servescope-model": "model",
    "servescope-slos": "slos",
    "servescope-pods": "pods",
    "servescope-cost": "cost",
}
OUTPUT_DIR = "dashboards"


def render_json(name: str, root: Path) -> str:
    """The JSON of one dashboard (imported lazily: the SDK is a development dependency)."""
    from servescope.dashboards.common import to_json

    module = importlib.import_module(f"{__name__}.{DASHBOARDS[name]}")
    return to_json(module.build(root))


def generators(root: Path) -> dict[str, Callable[[], str]]:
    """Repository path -> producer, for servescope.cli.generate."""
    return {f"{OUTPUT_DIR}/{name}.json": _producer(name, root) for name in DASHBOARDS}


def _producer(name: str, root: Path) -> Callable[[], str]:
    def produce() -> str:
        return render_json(name, root)

    produce.__name__ = f"render_{name.replace('-', '_')}"
    return produce
