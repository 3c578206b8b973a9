"""Every generated file in the repository, produced from its source of truth.

`make generate` writes them; a test runs the check mode and fails when a committed copy
has drifted from its source.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from servescope.cli import relabel
from servescope.cli.paths import bundled_model_card, repo_root
from servescope.cli.slo import render_repository_rules
from servescope.cli.telemetry_docs import render_markdown
from servescope.dashboards import generators as dashboard_generators


def generators(root: Path) -> dict[str, Callable[[], str]]:
    """Path relative to the repository root -> function producing its content."""
    return {
        "docs/telemetry.md": render_markdown,
        # SLO rules from the Sloth specs in deploy/prometheus/slos/ (`servescope slo generate`).
        "deploy/prometheus/rules/slos.generated.yml": render_repository_rules,
        # Grafana dashboards from servescope.dashboards, one JSON file each (`make dashboards`).
        **dashboard_generators(root),
        # The postprocess image's copy of the bundled model's card (labels, calibration), so
        # its Dockerfile copies from its own folder only; the classifier's is the source.
        "services/postprocess/model/model-card.json": bundled_model_card().read_text,
        # Last: the cost profile reads the rules and dashboards above. Its drop rules and
        # scrape limits, from the contract and every query the project runs; local mode, the
        # chart and the remote-write values (written from it, so after it) read it.
        str(relabel.SOURCE): relabel.render,
        # Per-model histograms recorded over models (what the store upstream receives).
        str(relabel.MODEL_RULES): relabel.render_model_rules,
        # Remote write upstream with the same drops (off until a user adds the file).
        str(relabel.REMOTE_WRITE_VALUES): relabel.render_remote_write,
    }


def generate_all(check: bool = False, root: Path | None = None) -> list[str]:
    """Paths whose content differs from what the generators produce (written unless check)."""
    root = root or repo_root()
    changed = []
    for relative, produce in generators(root).items():
        path = root / relative
        content = produce()
        current = path.read_text() if path.exists() else None
        if current != content:
            changed.append(relative)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
    return changed
