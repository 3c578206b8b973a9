"""Checker for beginner/03-add-a-metric: servescope_low_confidence_predictions_total.

1. The repository's telemetry contract loads and declares the counter the project's way:
   a name ending in _total, type counter, unit predictions, a help text, only postprocess,
   and labels with bounded values (none needed).
2. docs/telemetry.md is regenerated from the contract.
3. The running postprocess exposes it, and the contract check (servescope.cli.contract_check,
   run by the repository's own code) passes for every service, both ways.
4. The code counts: a prediction with top-1 confidence below 0.5 increments it by one, a
   confident one does not (requests sent straight to postprocess).
5. Prometheus has the series.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

LAB = "beginner/03-add-a-metric"
NAME = "servescope_low_confidence_predictions_total"
CONTRACT = "services/telemetry/src/servescope/telemetry/contract.yaml"
APP = "services/postprocess/src/servescope/postprocess/app.py"
UNSURE = [0.0] * 10  # every class equally likely: top-1 confidence 0.1
SURE = [30.0] + [0.0] * 9  # class 0, confidence ~1.0


def _counted(ctx: CheckContext) -> float | None:
    """The counter's value in postprocess's /metrics (all label sets together)."""
    response = ctx.http_get(ctx.urls["postprocess"] + "/metrics")
    if response.status != 200:
        return None
    for family in text_string_to_metric_families(response.text):
        if family.name + "_total" == NAME or family.name == NAME:
            return sum(s.value for s in family.samples if s.name == NAME)
    return None


def _predict(ctx: CheckContext, logits: list[float]) -> int:
    body = {"model_name": "digits-cnn", "model_version": "1", "logits": logits}
    return ctx.http_post(ctx.urls["postprocess"] + "/v1/postprocess", body).status


def check(ctx: CheckContext) -> None:
    services = {name: ctx.urls[name] for name in ("preprocess", "classifier", "postprocess")}
    run = ctx.python(str(ctx.lab.path / "contract_probe.py"), json.dumps(services))
    try:
        probe = json.loads(run.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        ctx.fail(
            "the repository's code loads",
            f"python says: {(run.stderr or run.stdout).strip()[-600:]}",
        )
        return
    if not ctx.require(
        "error" not in probe,
        "the telemetry contract loads",
        f"{CONTRACT} is refused: {probe.get('error')}",
    ):
        return
    spec = probe.get("spec")
    if not ctx.require(
        spec is not None,
        f"the contract declares {NAME}",
        f"add an entry under `metrics:` in {CONTRACT}; the entry of "
        "servescope_predictions_total is a good model",
    ):
        return
    ctx.require(
        spec["type"] == "counter",
        "it is a counter",
        f"it is declared as a {spec['type']}; a count of events that only goes up is a counter",
    )
    ctx.require(
        spec["unit"] == "predictions",
        "its unit is predictions",
        f"unit is {spec['unit']!r}: a counter's unit is what it counts, here predictions",
    )
    ctx.require(
        len(spec["help"]) >= 20 and "0.5" in spec["help"],
        "its help says what it counts, threshold included",
        "the help text is what people read in Prometheus and docs/telemetry.md: say it counts "
        "predictions whose top-1 confidence is below 0.5",
    )
    ctx.require(
        spec["services"] == ["postprocess"],
        "only postprocess exposes it",
        f"services is {spec['services']}; only postprocess sees the confidence: "
        "services: [postprocess] (a service that declares a metric creates it)",
    )
    unbounded = [
        label
        for label in spec["labels"]
        if not probe.get("label_rules", {}).get(label, {}).get("values")
        and label not in ("model_name", "model_version")
    ]
    ctx.require(
        not unbounded,
        "its labels have bounded values",
        f"labels {unbounded} have no closed list of values: every new value is a new series. "
        "This counter needs no labels (labels: [])",
    )
    ctx.require(
        probe.get("docs_current"),
        "docs/telemetry.md is regenerated from the contract",
        "run `uv run servescope generate` (CI fails when the generated docs differ from the "
        "contract)",
    )

    before = _counted(ctx)
    if not ctx.require(
        before is not None,
        f"the running postprocess exposes {NAME}",
        f"it is not in {ctx.urls['postprocess']}/metrics. Processes read the contract and code "
        f"when they start: `servescope lab restart {LAB}`",
    ):
        return
    problems = [f"{s}: {p}" for s, found in probe["problems"].items() for p in found]
    ctx.require(
        not problems,
        "the contract check passes for every service, both ways",
        "; ".join(problems[:4]) + (f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""),
    )
    unsure = _predict(ctx, UNSURE)
    after_unsure = _counted(ctx)
    sure = _predict(ctx, SURE)
    after_sure = _counted(ctx)
    if not ctx.require(
        unsure == 200 and sure == 200,
        "postprocess answers predictions",
        f"POST /v1/postprocess answered {unsure} and {sure}: see .run/postprocess.log",
    ):
        return
    ctx.require(
        before is not None and after_unsure is not None and after_unsure - before >= 1,
        "a prediction with confidence below 0.5 increments it",
        f"it did not move on a prediction with confidence 0.1: in {APP}, after the prediction "
        'is scored, `if result["confidence"] < 0.5: ...inc()` (and restart the lab)',
    )
    ctx.require(
        after_unsure is not None and after_sure == after_unsure,
        "a confident prediction does not",
        "it also moved on a prediction with confidence ~1.0: count only confidence < 0.5",
    )
    series = ctx.wait_for(
        lambda: ctx.query(f'{NAME}{{job="postprocess"}}'), timeout=4.0, interval=0.5
    )
    ctx.require(
        series,
        f"Prometheus has the series {NAME}",
        "Prometheus scrapes every second; if postprocess exposes it and Prometheus does not "
        "have it, look at http://127.0.0.1:9090/targets",
    )
