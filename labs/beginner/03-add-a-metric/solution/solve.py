"""Reference solution: declare the counter in the contract, count it in postprocess,
regenerate docs/telemetry.md and restart the services. Edits are anchored on the lines
they follow, so they survive unrelated changes to the same files."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

NAME = "servescope_low_confidence_predictions_total"
CONTRACT = "services/telemetry/src/servescope/telemetry/contract.yaml"
APP = "services/postprocess/src/servescope/postprocess/app.py"
ENTRY = f"""\
  - name: {NAME}
    type: counter
    unit: predictions
    help: >-
      Predictions whose calibrated top-1 confidence is below 0.5: the model is unsure. A
      rising share of all predictions is an early sign of drift or of a bad model version.
    services: [postprocess]
    labels: []
"""


def _declare(text: str) -> str:
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "name: servescope_predictions_total" in line)
    end = next(
        (i for i in range(start + 1, len(lines)) if not lines[i].startswith("    ")), len(lines)
    )
    return "".join([*lines[:end], ENTRY, *lines[end:]])


def _count(text: str) -> str:
    out = []
    for line in text.splitlines(keepends=True):
        out.append(line)
        indent = line[: len(line) - len(line.lstrip())]
        if 'metrics.counter("servescope_predictions_total")' in line:
            out.append(f'{indent}low_confidence = metrics.counter("{NAME}")\n')
        elif line.lstrip().startswith("predictions.labels(") and line.rstrip().endswith(".inc()"):
            out.append(f'{indent}if result["confidence"] < 0.5:\n')
            out.append(f"{indent}    low_confidence.inc()\n")
    return "".join(out)


def solve(ctx: CheckContext) -> None:
    contract = ctx.root / CONTRACT
    if NAME not in contract.read_text():
        contract.write_text(_declare(contract.read_text()))
    app = ctx.root / APP
    if NAME not in app.read_text():
        app.write_text(_count(app.read_text()))
    # Only the generated file this change affects (`servescope generate` writes them all).
    result = ctx.python(
        "-c",
        "from pathlib import Path; from servescope.cli.telemetry_docs import render_markdown; "
        "Path('docs/telemetry.md').write_text(render_markdown())",
    )
    if result.returncode != 0:
        raise RuntimeError(f"regenerating docs/telemetry.md failed: {result.stderr}")
    ctx.restart()
