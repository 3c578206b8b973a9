"""Run by the checker with the lab repository's code first on the path (ctx.python): what
that repository's own contract, contract check and docs generator say. Prints one JSON
object. Argument: a JSON object of service -> base URL to scrape."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

NAME = "servescope_low_confidence_predictions_total"


def main() -> None:
    urls = json.loads(sys.argv[1])
    try:
        from servescope.telemetry.contract import load_contract

        contract = load_contract()
    except Exception as exc:  # the learner's YAML, whatever is wrong with it
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return
    out: dict[str, object] = {}
    spec = next((m for m in contract.metrics if m.name == NAME), None)
    if spec is not None:
        out["spec"] = {
            "type": spec.type,
            "unit": spec.unit,
            "help": spec.help,
            "services": list(spec.services),
            "labels": list(spec.labels),
        }
        out["label_rules"] = {
            label: {
                "values": list(contract.label_rules[label].values),
                "pattern": contract.label_rules[label].pattern,
            }
            for label in spec.labels
            if label in contract.label_rules
        }
    from servescope.cli.contract_check import check_exposition

    problems: dict[str, list[str]] = {}
    for service, url in urls.items():
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as response:  # noqa: S310
                text = response.read().decode()
        except OSError as exc:
            problems[service] = [f"cannot scrape {url}/metrics: {exc}"]
            continue
        problems[service] = check_exposition(service, text, contract)
    out["problems"] = problems
    from servescope.cli.telemetry_docs import render_markdown

    out["docs_current"] = Path("docs/telemetry.md").read_text() == render_markdown(contract)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
