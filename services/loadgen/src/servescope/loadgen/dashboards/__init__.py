"""Grafana dashboards as code.

One module per dashboard builds it with grafana-foundation-sdk's typed builders; `make
dashboards` (or `make generate`) writes the JSON to the top-level dashboards/ folder, which
Grafana loads (deploy/local/grafana for a local Grafana, the chart's ConfigMaps through the
symlink deploy/helm/servescope/files/dashboards on Kubernetes). A test fails when the
committed JSON differs from what this code generates.

The code lives here rather than in dashboards/ itself so that it is an ordinary module of
the workspace (importable without path tricks, type-checked by mypy like the rest) and the
folder the chart links to holds nothing but the JSON it ships.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# File stem in dashboards/ -> module (in this package) whose build() returns the dashboard.
DASHBOARDS: dict[str, str] = {
    "servescope-overview": "overview",
    "servescope-model": "model",
    "servescope-slos": "slos",
    "servescope-pods": "pods",
    "servescope-cost": "cost",
}
OUTPUT_DIR = "dashboards"


def render_json(name: str) -> str:
    """The JSON of one dashboard (imported lazily: the SDK is a development dependency)."""
    from servescope.loadgen.dashboards.common import to_json

    module = importlib.import_module(f"{__name__}.{DASHBOARDS[name]}")
    return to_json(module.build())


def generators() -> dict[str, Callable[[], str]]:
    """Repository path -> producer, for servescope.loadgen.generate.GENERATORS."""
    return {f"{OUTPUT_DIR}/{name}.json": _producer(name) for name in DASHBOARDS}


def _producer(name: str) -> Callable[[], str]:
    def produce() -> str:
        return render_json(name)

    produce.__name__ = f"render_{name.replace('-', '_')}"
    return produce
