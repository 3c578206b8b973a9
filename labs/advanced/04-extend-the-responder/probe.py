"""The checker's probe for advanced/04-extend-the-responder (not the learner's file).

Run by check.py with the lab repository's code first on the path (ctx.python), so it sees
the learner's edits to services/responder/src/servescope/responder/. It never touches the
network: the responder's Prometheus client is replaced by canned answers, keyed by the
playbook's check keys, and the real diagnosis code (`Responder.diagnose`: playbook, queries,
culprit, note) and `render_markdown` do the rest.

    python probe.py RUNBOOK.md      ->  one JSON object on stdout
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

ALERT = "ServescopeRejectedInputsHigh"
WINDOW = "5m"
NAMESPACE = "servescope"


def alert(service: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {
            "alertname": ALERT,
            "severity": "ticket",
            "category": "inputs",
            "service": service,
            "job": service,
            "namespace": NAMESPACE,
        },
        "annotations": {
            "summary": f"More than 20% of {service}'s requests are refused as bad input.",
            "runbook_url": f"runbooks/{ALERT}.md",
        },
        "startsAt": "2026-12-01T10:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": f"inputs{service}",
    }


# Prometheus's answers to the two checks the README asks for, per scenario.
SCENARIOS: dict[str, dict[str, Any]] = {
    # A client uploads PDFs renamed .png: the edge refuses a third of its requests.
    "preprocess": {
        "alert": "preprocess",
        "answers": {
            "rejected_ratio": [({"job": "preprocess"}, 0.31), ({"job": "classifier"}, 0.004)],
            "rejected": [
                ({"job": "preprocess", "reason": "undecodable_image"}, 2.4),
                ({"job": "preprocess", "reason": "image_too_small"}, 0.31),
                ({"job": "preprocess", "reason": "empty_body"}, 0.02),
                ({"job": "classifier", "reason": "invalid_tensor"}, 0.03),
            ],
        },
        "expect": {"service": "preprocess", "reason": "undecodable_image"},
    },
    # A preprocess release sends tensors of the wrong shape: the classifier refuses them.
    "classifier": {
        "alert": "classifier",
        "answers": {
            "rejected_ratio": [({"job": "classifier"}, 0.58), ({"job": "preprocess"}, 0.06)],
            "rejected": [
                ({"job": "preprocess", "reason": "image_too_small"}, 0.9),
                ({"job": "preprocess", "reason": "unsupported_media_type"}, 0.2),
                ({"job": "classifier", "reason": "batch_too_large"}, 0.1),
                ({"job": "classifier", "reason": "invalid_tensor"}, 0.7),
            ],
        },
        "expect": {"service": "classifier", "reason": "invalid_tensor"},
    },
    # The alert has just resolved itself: nothing is refused in the window any more.
    "quiet": {
        "alert": "postprocess",
        "answers": {"rejected_ratio": [], "rejected": []},
        "expect": {"service": "postprocess", "reason": None},
    },
    # Prometheus does not answer at all.
    "prometheus-down": {
        "alert": "preprocess",
        "answers": None,
        "expect": {"service": "preprocess", "reason": None},
    },
}


def main() -> int:
    runbook = Path(sys.argv[1])
    out: dict[str, Any] = {}
    try:
        from servescope.responder import playbooks
        from servescope.responder.notes import Responder, render_markdown
        from servescope.responder.prometheus import Sample
        from servescope.responder.settings import Settings
    except Exception:
        out["import_error"] = traceback.format_exc(limit=3)
        print(json.dumps(out))
        return 0

    checks = playbooks.playbook("inputs")
    out["generic"] = tuple(checks) == tuple(playbooks.playbook(None))
    out["checks"] = [
        {
            "key": c.key,
            "title": c.title,
            "plain": _render(playbooks.render_check, c, None),
            "namespaced": _render(playbooks.render_check, c, NAMESPACE),
        }
        for c in checks
    ]
    out["contract"] = _contract_problems(out["checks"], runbook)

    class CannedPrometheus:
        """Answers the playbook's queries from a table, by check key; no network."""

        def __init__(self, answers: dict[str, Any] | None) -> None:
            self.answers = answers
            self.by_query = {playbooks.render_check(c, WINDOW, NAMESPACE): c.key for c in checks}

        async def query(self, promql: str, at: float) -> list[Any]:
            if self.answers is None:
                raise ConnectionError("Cannot connect to host 127.0.0.1:9090")
            key = self.by_query.get(promql, "")
            return [Sample(dict(labels), value) for labels, value in self.answers.get(key, [])]

        async def exemplars(self, promql: str, start: float, end: float) -> list[Any]:
            return []

    out["scenarios"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            incident_dir=Path(tmp) / "incidents",
            window=WINDOW,
            runbook_dir=runbook.parent,
            max_traces=0,
        )
        for name, scenario in SCENARIOS.items():
            result: dict[str, Any] = {"expect": scenario["expect"]}
            try:
                responder = Responder(settings, None)  # type: ignore[arg-type]
                responder.prometheus = CannedPrometheus(scenario["answers"])  # type: ignore[assignment]
                the_alert = alert(scenario["alert"])
                note = asyncio.run(responder.diagnose(the_alert, f"lab-{name}"))
                note["notifications"] = []
                result["culprit"] = note["culprit"]
                result["markdown"] = render_markdown(note)
            except Exception as exc:
                result["error"] = _where(exc)
            out["scenarios"][name] = result
    print(json.dumps(out))
    return 0


def _where(exc: BaseException) -> str:
    """The exception and the responder line that raised it (the frame a learner wrote)."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if "servescope/responder" in f.filename
    ]
    at = ""
    if frames:
        frame = frames[-1]
        at = f" at {Path(frame.filename).name}:{frame.lineno} in {frame.name}(): {frame.line}"
    return f"{type(exc).__name__}: {exc}{at}"


def _render(render: Any, check: Any, namespace: str | None) -> str | None:
    try:
        return str(render(check, WINDOW, namespace))
    except Exception as exc:
        return f"ERROR: {type(exc).__name__}: {exc}"


def _contract_problems(checks: list[dict[str, Any]], runbook: Path) -> dict[str, list[str]]:
    """Series that no contract declares, in the playbook's queries and the runbook's."""
    from servescope.cli.slo import check_expression
    from servescope.telemetry.contract import load_contract

    contract = load_contract()
    found: dict[str, list[str]] = {}
    for check in checks:
        for key in ("plain", "namespaced"):
            query = check[key]
            if query is None or query.startswith("ERROR:"):
                found.setdefault(f"check {check['key']}", []).append(str(query))
                continue
            problems = check_expression(query, contract)
            if problems:
                found.setdefault(f"check {check['key']}", []).extend(problems)
    try:
        text = runbook.read_text()
    except OSError:
        text = ""
    for number, block in enumerate(re.findall(r"```promql\n(.*?)```", text, flags=re.S), 1):
        # Placeholders a page may use, like <service>, become a plausible value.
        query = re.sub(r"<[a-z_ -]+>", "preprocess", block.strip())
        problems = check_expression(query, contract)
        if problems:
            found.setdefault(f"runbook query {number}", []).extend(problems)
    return found


if __name__ == "__main__":
    sys.exit(main())
