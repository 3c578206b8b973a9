"""Checker for advanced/04-extend-the-responder: a new alert's runbook and its automated
first response.

* work/inputs.alerts.yml (given) still passes `promtool check rules` and still declares
  ServescopeRejectedInputsHigh with category `inputs` and its runbook_url.
* work/ServescopeRejectedInputsHigh.md follows runbooks/README.md's template (title, the
  severity line, the six sections in order), names the queries to run first (rejections by
  reason), the log event to grep (request_rejected), at least two causes, and every PromQL
  block reads series the telemetry contract declares.
* The responder (services/responder/src/servescope/responder/, edited by the learner) has a
  playbook of its own for category `inputs` with the checks `rejected_ratio` and `rejected`,
  whose queries read declared series and, run by promtool on hidden series (probes, two
  namespaces, three services), answer exactly the share of each service's requests refused
  and the refusals per second by service and reason.
* Fed a synthetic alert and canned Prometheus answers (probe.py, this lab's own file, run
  with the lab repository's code; no network), the responder's real diagnosis writes a note
  whose culprit is the refusing service and whose summary and markdown name it and its top
  reason; with nothing refused, or Prometheus down, it still writes a note.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

ALERT = "ServescopeRejectedInputsHigh"
RULES = "inputs.alerts.yml"
RUNBOOK = f"{ALERT}.md"
SECTIONS = (
    "Meaning",
    "Impact",
    "First three things to run",
    "Likely causes and how to tell them apart",
    "Mitigation",
    "Escalation",
)
REQUIRED_CHECKS = ("rejected_ratio", "rejected")
PLAYBOOKS = "services/responder/src/servescope/responder/playbooks.py"
CULPRITS = "services/responder/src/servescope/responder/culprits.py"
PROBES = "/metrics|/healthz|/readyz|/v2/health/.*|.*/ready|/admin/.*"


def _tail(text: str, lines: int = 8) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def check(ctx: CheckContext) -> None:
    lab_dir = ctx.root / "labs" / str(ctx.lab["id"])
    _check_rule(ctx)
    runbook = ctx.workspace / RUNBOOK
    _check_runbook(ctx, runbook)

    run = ctx.python(str(lab_dir / "probe.py"), str(runbook))
    try:
        probe = json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        ctx.fail(
            "the responder's code loads",
            "the probe could not run it: "
            + _tail(run.stderr or run.stdout)
            + f". A syntax error in {PLAYBOOKS} or {CULPRITS}? Try `uv run python -c "
            '"import servescope.responder.notes"`',
        )
        return
    if not ctx.require(
        "import_error" not in probe,
        "the responder's code loads",
        f"importing it fails: {_tail(probe.get('import_error', ''), 4)}. Check your edits to "
        f"{PLAYBOOKS} and {CULPRITS}",
    ):
        return
    contract = probe.get("contract") or {}
    runbook_problems = {k: v for k, v in contract.items() if k.startswith("runbook")}
    if runbook.is_file():
        ctx.require(
            not runbook_problems,
            "every PromQL block of your runbook reads series the telemetry contract declares",
            "; ".join(f"{k}: {', '.join(v)}" for k, v in runbook_problems.items())
            + ". Metric and label names are in docs/telemetry.md; a copied query with a typo "
            "returns nothing at 3 a.m., which looks exactly like 'all fine'",
        )
    if not _check_playbook(ctx, probe, contract):
        return
    _check_notes(ctx, probe)


# --- the rule and the runbook -----------------------------------------------------------------


def _check_rule(ctx: CheckContext) -> None:
    path = ctx.workspace / RULES
    if not ctx.require(
        path.is_file(),
        f"{RULES} (the new alert) is in your workspace",
        "it comes with the lab: `servescope lab reset` and `servescope lab start` bring it back",
    ):
        return
    result = ctx.promtool("check", "rules", RULES)
    ctx.require(
        result.returncode == 0,
        f"`promtool check rules {RULES}` accepts the alert",
        "promtool says: " + _tail(result.stdout + result.stderr),
    )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        data = None
    rules = [
        rule
        for group in (data or {}).get("groups") or []
        for rule in (group or {}).get("rules") or []
        if isinstance(rule, dict) and rule.get("alert") == ALERT
    ]
    rule = rules[0] if rules else {}
    ctx.require(
        (rule.get("labels") or {}).get("category") == "inputs"
        and (rule.get("annotations") or {}).get("runbook_url") == f"runbooks/{RUNBOOK}",
        f"{RULES} still declares {ALERT} with category inputs and its runbook_url",
        "the responder picks the playbook by the alert's `category` label and links the "
        f"page in `runbook_url`: keep `category: inputs` and `runbook_url: runbooks/{RUNBOOK}`",
    )


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return match.group(1) if match else ""


def _check_runbook(ctx: CheckContext, path: Path) -> None:
    if not ctx.require(
        path.is_file(),
        f"your runbook page {RUNBOOK} is in your workspace",
        f"create {RUNBOOK} in {ctx.workspace}: copy the template at the end of "
        "runbooks/README.md and fill it in",
    ):
        return
    text = path.read_text()
    ctx.require(
        text.startswith(f"# {ALERT}\n"),
        f"the page starts with the alert's name as its title (`# {ALERT}`)",
        "the first line is the title, exactly the alert name: that is how people (and the "
        "responder's link) find it",
    )
    ctx.require(
        re.search(r"\*\*Severity:\*\*\s*ticket", text) is not None
        and re.search(r"\*\*Category:\*\*\s*inputs", text) is not None,
        "the page says the alert's severity (ticket) and category (inputs) under the title",
        "copy the template's second line: `**Severity:** ticket · **Category:** inputs · "
        "**Rule:** ...` (the values are the rule's labels)",
    )
    headings = tuple(re.findall(r"^## (.+?)\s*$", text, flags=re.M))
    ctx.require(
        headings == SECTIONS,
        "the page has the template's six sections, in order",
        f"found {list(headings)}; the template (runbooks/README.md) has "
        f"{', '.join(SECTIONS)}. Every page has the same headings so a tired reader finds "
        "'what to run' in the same place every time",
    )
    first = _section(text, "First three things to run")
    queries = re.findall(r"```promql\n(.*?)```", first, flags=re.S)
    ctx.require(
        any("servescope_rejected_inputs_total" in q and "reason" in q for q in queries),
        "'First three things to run' has a PromQL query of the refusals by reason",
        "put a ```promql block there that breaks servescope_rejected_inputs_total down by "
        "service and reason, e.g. sum by (job, reason) (rate(servescope_rejected_inputs_total[5m])): "
        "which service refuses, and why, is the first question",
    )
    ctx.require(
        "request_rejected" in first,
        "'First three things to run' says how to find the refused requests in the logs",
        "every refusal logs a line with event `request_rejected` and its `kind` (the "
        "reason) and trace_id: give the command that greps for it (kubectl logs ... | grep "
        "request_rejected, or .run/preprocess.log in local mode)",
    )
    causes = _section(text, "Likely causes and how to tell them apart")
    rows = [
        line
        for line in causes.splitlines()
        if line.strip().startswith("|")
        and not re.match(r"^\|\s*-", line.strip())
        and "how to tell" not in line
    ]
    ctx.require(
        len(rows) >= 2,
        "'Likely causes' lists at least two causes, each with how to tell it",
        "a table `| cause | how to tell |` with a row per cause: a client sending the wrong "
        "files, a new client or release, an edge limit set too low, a preprocess bug that the "
        "classifier refuses... and for each the query or log line that confirms it",
    )


# --- the playbook -----------------------------------------------------------------------------


def _check_playbook(ctx: CheckContext, probe: dict[str, Any], contract: dict[str, Any]) -> bool:
    own = ctx.require(
        not probe.get("generic"),
        "the responder has a playbook of its own for category `inputs`",
        f"playbook('inputs') returns the generic checks. In {PLAYBOOKS}, define your checks "
        '(a tuple of Check, like ERROR_CHECKS) and add `"inputs": INPUT_CHECKS` to PLAYBOOKS',
    )
    if not own:
        return False
    checks = {c["key"]: c for c in probe.get("checks") or []}
    missing = [k for k in REQUIRED_CHECKS if k not in checks]
    if not ctx.require(
        not missing,
        "the inputs playbook has the checks `rejected_ratio` and `rejected`",
        f"missing {', '.join(missing)} (found {', '.join(checks) or 'none'}). The keys are "
        "how the culprit code finds the results: rejected_ratio = share of each service's "
        "requests refused, rejected = refusals per second by service and reason",
    ):
        return False
    playbook_problems = {k: v for k, v in contract.items() if k.startswith("check ")}
    ctx.require(
        not playbook_problems,
        "every query of the inputs playbook reads series the telemetry contract declares",
        "; ".join(f"{k}: {', '.join(v)}" for k, v in playbook_problems.items())
        + ". Use the raw series (servescope_rejected_inputs_total, "
        "http_server_request_duration_seconds_count), not recording rules: the responder "
        "must work wherever Prometheus scrapes the services",
    )
    _check_query_semantics(ctx, checks)
    return True


def _series(labels: dict[str, str], per_minute: int, minutes: int = 10) -> dict[str, str]:
    name = labels.pop("__name__")
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": f"0+{per_minute}x{minutes}"}


def hidden_series() -> list[dict[str, str]]:
    """Ten minutes of two namespaces: per minute, in servescope, preprocess refuses 30
    undecodable and 6 too-small uploads out of 120 predictions (plus 60 probes), the
    classifier 3 of 100 tensors (plus 60 probes), postprocess nothing of 97; in staging,
    preprocess refuses 60 empty bodies out of 120."""
    rejected = "servescope_rejected_inputs_total"
    http = "http_server_request_duration_seconds_count"
    rows: list[tuple[dict[str, str], int]] = []
    for ns, inst in (("servescope", "10.42.0.17:8000"), ("staging", "10.43.0.9:8000")):
        base = {"namespace": ns, "instance": inst}
        if ns == "servescope":
            rows += [
                (
                    {
                        "__name__": rejected,
                        **base,
                        "job": "preprocess",
                        "reason": "undecodable_image",
                    },
                    30,
                ),
                (
                    {
                        "__name__": rejected,
                        **base,
                        "job": "preprocess",
                        "reason": "image_too_small",
                    },
                    6,
                ),
                (
                    {"__name__": rejected, **base, "job": "classifier", "reason": "invalid_tensor"},
                    3,
                ),
                (
                    {
                        "__name__": http,
                        **base,
                        "job": "preprocess",
                        "http_route": "/v1/predict",
                        "http_request_method": "POST",
                        "http_response_status_code": "200",
                    },
                    84,
                ),
                (
                    {
                        "__name__": http,
                        **base,
                        "job": "preprocess",
                        "http_route": "/v1/predict",
                        "http_request_method": "POST",
                        "http_response_status_code": "400",
                    },
                    36,
                ),
                (
                    {
                        "__name__": http,
                        **base,
                        "job": "preprocess",
                        "http_route": "/healthz",
                        "http_request_method": "GET",
                        "http_response_status_code": "200",
                    },
                    30,
                ),
                (
                    {
                        "__name__": http,
                        **base,
                        "job": "preprocess",
                        "http_route": "/readyz",
                        "http_request_method": "GET",
                        "http_response_status_code": "200",
                    },
                    30,
                ),
                (
                    {
                        "__name__": http,
                        **base,
                        "job": "classifier",
                        "http_route": "/v2/models/{name}/infer",
                        "http_request_method": "POST",
                        "http_response_status_code": "200",
                    },
                    97,
                ),
                (
                    {
                        "__name__": http,
                        **base,
                        "job": "classifier",
                        "http_route": "/v2/models/{name}/infer",
                        "http_request_method": "POST",
                        "http_response_status_code": "400",
                    },
                    3,
                ),
                (
                    {
                        "__name__": http,
                        **base,
                        "job": "classifier",
                        "http_route": "/v2/health/ready",
                        "http_request_method": "GET",
                        "http_response_status_code": "200",
                    },
                    60,
                ),
                (
                    {
                        "__name__": http,
                        **base,
                        "job": "postprocess",
                        "http_route": "/v1/postprocess",
                        "http_request_method": "POST",
                        "http_response_status_code": "200",
                    },
                    97,
                ),
                (
                    {
                        "__name__": http,
                        **base,
                        "job": "postprocess",
                        "http_route": "/metrics",
                        "http_request_method": "GET",
                        "http_response_status_code": "200",
                    },
                    12,
                ),
            ]
        else:
            rows += [
                (
                    {"__name__": rejected, **base, "job": "preprocess", "reason": "empty_body"},
                    60,
                ),
                (
                    {
                        "__name__": http,
                        **base,
                        "job": "preprocess",
                        "http_route": "/v1/predict",
                        "http_request_method": "POST",
                        "http_response_status_code": "200",
                    },
                    60,
                ),
                (
                    {
                        "__name__": http,
                        **base,
                        "job": "preprocess",
                        "http_route": "/v1/predict",
                        "http_request_method": "POST",
                        "http_response_status_code": "400",
                    },
                    60,
                ),
            ]
    return [_series(dict(labels), n) for labels, n in rows]


# What the two checks must answer on those series, scaled and rounded (promtool compares
# floats exactly): rejected_ratio x 10,000, rejected x 1,000 (per second).
EXPECTED = {
    ("rejected_ratio", "namespaced"): [('{job="preprocess"}', 3000), ('{job="classifier"}', 300)],
    ("rejected_ratio", "plain"): [('{job="preprocess"}', 4000), ('{job="classifier"}', 300)],
    ("rejected", "namespaced"): [
        ('{job="preprocess", reason="undecodable_image"}', 500),
        ('{job="preprocess", reason="image_too_small"}', 100),
        ('{job="classifier", reason="invalid_tensor"}', 50),
    ],
    ("rejected", "plain"): [
        ('{job="preprocess", reason="undecodable_image"}', 500),
        ('{job="preprocess", reason="image_too_small"}', 100),
        ('{job="classifier", reason="invalid_tensor"}', 50),
        ('{job="preprocess", reason="empty_body"}', 1000),
    ],
}
SCALE = {"rejected_ratio": 10000, "rejected": 1000}
MEANING = {
    "rejected_ratio": (
        "one series per service, label `job` only, valued refused / all its requests with "
        f'probes and scrapes left out (http_route!~"{PROBES}")'
    ),
    "rejected": (
        "one series per service and reason, labels `job` and `reason` only, valued refusals "
        "per second, services that refuse nothing left out (`> 0`)"
    ),
}


def _check_query_semantics(ctx: CheckContext, checks: dict[str, dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory(prefix="servescope-lab-") as tmp:
        for key in REQUIRED_CHECKS:
            failures = []
            for variant in ("namespaced", "plain"):
                query = checks[key][variant]
                test = {
                    "evaluation_interval": "1m",
                    "tests": [
                        {
                            "interval": "1m",
                            "input_series": hidden_series(),
                            "promql_expr_test": [
                                {
                                    "expr": f"round(({query}) * {SCALE[key]})",
                                    "eval_time": "10m",
                                    "exp_samples": [
                                        {"labels": labels, "value": value}
                                        for labels, value in EXPECTED[(key, variant)]
                                    ],
                                }
                            ],
                        }
                    ],
                }
                path = Path(tmp) / f"{key}-{variant}.test.yml"
                path.write_text(yaml.safe_dump(test, sort_keys=False))
                result = ctx.promtool("test", "rules", str(path))
                if result.returncode != 0:
                    failures.append((variant, result.stdout + result.stderr))
            said = ""
            if failures:
                variant, output = failures[0]
                got = re.search(r"got:\s*(.*?)\s*$", output, flags=re.S)
                said = (
                    f"rendered {'for namespace servescope' if variant == 'namespaced' else 'without a namespace'}, "
                    f"your query {checks[key][variant]!r} answered "
                    f"{(got.group(1) if got else _tail(output, 3))[:400]} (values x{SCALE[key]}). "
                )
                if 'namespace="servescope"' not in str(checks[key]["namespaced"]):
                    said += (
                        "It must keep to the alert's namespace: put {ns} inside every selector, "
                        "as the other checks do. "
                    )
            ctx.require(
                not failures,
                f"check `{key}` answers {MEANING[key].split(',')[0]} (hidden series)",
                said + f"Expected {MEANING[key]}.",
            )


# --- the notes ----------------------------------------------------------------------------------


def _check_notes(ctx: CheckContext, probe: dict[str, Any]) -> None:
    scenarios = probe.get("scenarios") or {}
    for name in ("preprocess", "classifier"):
        found = scenarios.get(name) or {}
        expect = found.get("expect") or {}
        service, reason = str(expect.get("service")), str(expect.get("reason"))
        if not ctx.require(
            "error" not in found,
            f"the responder writes a note for an inputs alert ({name} refusing)",
            f"its diagnosis raised {found.get('error', '')}",
        ):
            continue
        culprit = found.get("culprit") or {}
        summary = str(culprit.get("summary") or "")
        markdown = str(found.get("markdown") or "")
        where = (
            f"Canned answers: {service} refuses the largest share of its requests, mostly "
            f"`{reason}`. Your culprit: service={culprit.get('service')!r}, "
            f"step={culprit.get('step')!r}, summary={summary!r}. "
        )
        if "no playbook" in summary:
            where += (
                "find_culprit does not send category 'inputs' to your function yet: add "
                'the branch `if category == "inputs": return inputs_culprit(results, service)` '
                "before its last return. "
            )
        ctx.require(
            culprit.get("service") == service,
            f"the note's culprit is the refusing service ({name} scenario)",
            where + "Pick the service with the highest rejected_ratio (not the alert's own "
            f"label alone); in {CULPRITS}, add an inputs culprit function and call it from "
            "find_culprit for category 'inputs'",
        )
        ctx.require(
            service in summary and reason in summary and reason in markdown,
            f"the note names the refusing service and its top reason ({name} scenario)",
            where + "Among that service's `rejected` series, the reason with the highest "
            "rate is the one to name in the summary (and, e.g., as the culprit's step); "
            "add the others to the evidence",
        )
    for name, what in (("quiet", "nothing is refused"), ("prometheus-down", "Prometheus is down")):
        found = scenarios.get(name) or {}
        ctx.require(
            "error" not in found and bool((found.get("culprit") or {}).get("summary")),
            f"the responder still writes a note when {what}",
            f"its diagnosis raised {found.get('error', '')}. Results may be empty "
            "(or missing, when a query failed): read them with .get() and say so in the "
            "summary instead of failing"
            if "error" in found
            else "the culprit has no summary: say what the results show (e.g. 'no refused "
            "inputs in the window')",
        )
