"""Checker for advanced/03-slo-burn-rate: a Sloth SLO spec, its rules, and promtool proof.

1. work/slo.yml passes `servescope slo validate` and says what the lab asks: objective 99.9
   (a percentage), a page alert labelled severity=page and a ticket alert labelled
   severity=ticket, with a runbook_url.
2. work/slo.rules.yml exists and equals what `servescope slo generate work/slo.yml` produces
   now (the learner regenerated after the last edit).
3. The learner's `promtool test rules slo.test.yml` passes, tests slo.rules.yml, and has a
   case where the page alert fires and one where it stays silent.
4. Hidden promtool tests, generated into a temporary folder against the freshly generated
   rules, with series for both possible SLIs (the end_to_end stage histogram and the HTTP
   server histogram of POST /v1/predict, plus probes and other stages): a burst (10% of
   predictions take 700 ms for 15 minutes, after 6 hours of normal traffic) pages within 12
   minutes; a slower burn (4% for 40 minutes) pages within 30 (a 99.5% objective does not);
   a trickle (0.05% slow for 6 hours) and a normal tail (2% of requests at 300-500 ms)
   never page.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

SPEC = "slo.yml"
RULES = "slo.rules.yml"
TESTS = "slo.test.yml"
OBJECTIVE = Decimal("99.9")

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)
INSTANCES = ("10.42.0.17:8000", "10.42.1.23:8000")
PER_MINUTE = 1000  # predictions per minute per instance (~33 per second in all)
HISTORY = 370  # minutes of normal traffic before a burst: every window up to 6h is full

# A mix: (latency in seconds, predictions per minute per instance); always PER_MINUTE in all.
Mix = tuple[tuple[float, int], ...]


def _mix(slow: int, tail: int = 20) -> Mix:
    """`slow` predictions at 700 ms (over the threshold, under 1 s), `tail` at 400 ms (under
    the threshold), the rest fast."""
    return ((0.04, PER_MINUTE - slow - tail), (0.4, tail), (0.7, slow))


NORMAL = _mix(0)


class Phase(NamedTuple):
    minutes: int
    mix: Mix


class Scenario(NamedTuple):
    key: str
    criterion: str
    phases: tuple[Phase, ...]
    firing_at: tuple[int, ...]  # minutes at which the page must be firing
    silent_at: tuple[int, ...]  # minutes at which it must not be


SCENARIOS = (
    Scenario(
        "burst",
        "a burst (10% of predictions take 700 ms for 15 minutes) pages within 12 minutes",
        (Phase(HISTORY, NORMAL), Phase(15, _mix(100)), Phase(15, NORMAL)),
        firing_at=(HISTORY + 12,),
        silent_at=(HISTORY - 1,),
    ),
    Scenario(
        "slow-burn",
        "a slower burn (4% of predictions take 700 ms for 40 minutes) pages within 30 minutes",
        (Phase(HISTORY, NORMAL), Phase(40, _mix(40))),
        firing_at=(HISTORY + 30,),
        silent_at=(HISTORY - 1,),
    ),
    Scenario(
        "trickle",
        "a trickle (0.05% of predictions over 500 ms, for 6 hours) never pages",
        # 1 slow prediction a minute out of 2,000 (one instance; the other is clean).
        (Phase(360, NORMAL),),
        firing_at=(),
        silent_at=(30, 60, 120, 180, 240, 300, 360),
    ),
)
TRICKLE_INSTANCE = 0


# --- series ---------------------------------------------------------------------------------


def _le(bound: float) -> str:
    return repr(float(bound))


def _bucket_of(latency: float) -> int:
    for index, bound in enumerate(BUCKETS):
        if latency <= bound:
            return index
    return len(BUCKETS)


def _notation(values: Sequence[float]) -> str:
    parts: list[str] = []
    i = 0
    while i < len(values):
        j, step = i, 0.0
        if i + 1 < len(values):
            step = values[i + 1] - values[i]
            j = i + 1
            while j + 1 < len(values) and values[j + 1] - values[j] == step:
                j += 1
        start = f"{values[i]:.6f}".rstrip("0").rstrip(".")
        inc = f"{abs(step):.6f}".rstrip("0").rstrip(".") or "0"
        parts.append(f"{start}{'-' if step < 0 else '+'}{inc}x{j - i}")
        i = j + 1
    return " ".join(parts)


def _histogram(name: str, labels: dict[str, str], mixes: Sequence[Mix]) -> list[dict[str, str]]:
    cumulative = [0] * (len(BUCKETS) + 1)
    count, total = 0, 0.0
    rows: list[list[float]] = [[] for _ in cumulative]
    counts: list[float] = []
    sums: list[float] = []
    for mix in mixes:
        for latency, n in mix:
            for index in range(_bucket_of(latency), len(cumulative)):
                cumulative[index] += n
            count += n
            total += latency * n
        for row, value in zip(rows, cumulative, strict=True):
            row.append(value)
        counts.append(count)
        sums.append(round(total, 3))

    def series(suffix: str, extra: dict[str, str]) -> str:
        inner = ", ".join(f'{k}="{v}"' for k, v in {**labels, **extra}.items())
        return f"{name}{suffix}{{{inner}}}"

    out = [
        {
            "series": series("_bucket", {"le": _le(BUCKETS[i]) if i < len(BUCKETS) else "+Inf"}),
            "values": _notation(row),
        }
        for i, row in enumerate(rows)
    ]
    out.append({"series": series("_count", {}), "values": _notation(counts)})
    out.append({"series": series("_sum", {}), "values": _notation(sums)})
    return out


def _steps(scenario: Scenario) -> list[Mix]:
    steps = [phase.mix for phase in scenario.phases for _ in range(phase.minutes)]
    return [*steps, steps[-1]]


def scenario_test(scenario: Scenario, rules_path: Path, alert: str) -> dict[str, Any]:
    steps = _steps(scenario)
    series: list[dict[str, str]] = []
    for number, instance in enumerate(INSTANCES):
        mixes = steps
        if scenario.key == "trickle":
            one = ((0.04, PER_MINUTE - 21), (0.4, 20), (0.7, 1))
            mixes = [one if number == TRICKLE_INSTANCE else NORMAL for _ in steps]
        base = {"namespace": "servescope", "job": "preprocess", "instance": instance}
        series += _histogram(
            "servescope_stage_duration_seconds", {**base, "stage": "end_to_end"}, mixes
        )
        fast_stage: Mix = ((0.002, PER_MINUTE),)
        series += _histogram(
            "servescope_stage_duration_seconds",
            {**base, "stage": "decode"},
            [fast_stage] * len(steps),
        )
        http = {**base, "http_request_method": "POST", "http_route": "/v1/predict"}
        series += _histogram(
            "http_server_request_duration_seconds",
            {**http, "http_response_status_code": "200"},
            mixes,
        )
        series += _histogram(
            "http_server_request_duration_seconds",
            {**http, "http_response_status_code": "400"},
            [((0.003, 10),)] * len(steps),
        )
        series += _histogram(
            "http_server_request_duration_seconds",
            {
                **base,
                "http_request_method": "GET",
                "http_route": "/readyz",
                "http_response_status_code": "200",
            },
            [((0.001, 12),)] * len(steps),
        )
    query = f'max(ALERTS{{alertname="{alert}", sloth_severity="page", alertstate="firing"}})'
    checks = [
        {"expr": query, "eval_time": f"{m}m", "exp_samples": [{"labels": "{}", "value": 1}]}
        for m in scenario.firing_at
    ] + [{"expr": query, "eval_time": f"{m}m", "exp_samples": []} for m in scenario.silent_at]
    return {
        "rule_files": [str(rules_path)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": scenario.key,
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": checks,
            }
        ],
    }


# --- helpers ----------------------------------------------------------------------------------


def _cli(ctx: CheckContext, *args: str) -> subprocess.CompletedProcess[str]:
    """The lab repository's own `servescope` command, run from its root."""
    servescope = getattr(ctx, "servescope", None)
    if servescope is not None:
        return servescope(*args)  # type: ignore[no-any-return]
    return subprocess.run(
        [sys.executable, "-m", "servescope.cli", *args],
        cwd=ctx.root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tail(text: str, lines: int = 10) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _load(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _alerts(rules: Any) -> list[dict[str, Any]]:
    if not isinstance(rules, dict):
        return []
    return [
        rule
        for group in rules.get("groups") or []
        for rule in (group or {}).get("rules") or []
        if isinstance(rule, dict) and "alert" in rule
    ]


def _observed(output: str) -> str:
    fired: list[str] = []
    silent: list[str] = []
    for when, expected in re.findall(r"time: ([0-9a-z]+),\s*exp: (nil|\{\})", output):
        (fired if expected == "nil" else silent).append(when)
    said = []
    if fired:
        said.append("Your page alert was firing at " + ", ".join(fired) + " where it should not")
    if silent:
        said.append(
            ("it" if fired else "Your page alert")
            + " was not firing at "
            + ", ".join(silent)
            + " where it should"
        )
    return "; ".join(said) + ". " if said else "promtool: " + _tail(output, 6) + ". "


# --- the check --------------------------------------------------------------------------------


def check(ctx: CheckContext) -> None:
    spec = ctx.workspace / SPEC
    rules = ctx.workspace / RULES
    tests = ctx.workspace / TESTS
    if not ctx.require(
        spec.is_file(),
        f"{SPEC} exists in your workspace",
        f"create {SPEC} in {ctx.workspace} (`servescope lab start` copies a starter there)",
    ):
        return
    validated = _cli(ctx, "slo", "validate", str(spec))
    if not ctx.require(
        validated.returncode == 0,
        f"`servescope slo validate {SPEC}` accepts your spec",
        "it says: "
        + _tail(validated.stderr or validated.stdout)
        + f". Run `uv run servescope slo validate {SPEC}` in your workspace after each edit",
    ):
        return
    _check_spec(ctx, _load(spec))

    fresh = _cli(ctx, "slo", "generate", str(spec), "--out", "-")
    if not ctx.require(
        fresh.returncode == 0,
        "`servescope slo generate` turns your spec into rules",
        _tail(fresh.stderr or fresh.stdout),
    ):
        return
    generated = yaml.safe_load(fresh.stdout)
    ctx.require(
        rules.is_file() and _load(rules) == generated,
        f"{RULES} is what `servescope slo generate` makes of your current {SPEC}",
        (
            f"{RULES} differs from a fresh generation: you edited {SPEC} (or {RULES} by "
            "hand) since you last generated. "
            if rules.is_file()
            else f"{RULES} does not exist yet. "
        )
        + f"Run `uv run servescope slo generate {SPEC} --out {RULES}` in your workspace; "
        "never edit the generated file",
    )
    page = [
        a for a in _alerts(generated) if (a.get("labels") or {}).get("sloth_severity") == "page"
    ]
    ticket = [
        a for a in _alerts(generated) if (a.get("labels") or {}).get("sloth_severity") == "ticket"
    ]
    _check_alerts(ctx, page, ticket)
    if tests.is_file() or ctx.require(
        False,
        f"{TESTS} exists in your workspace",
        f"create {TESTS}: your promtool proof that a burst pages and a trickle does not",
    ):
        _check_own_tests(ctx, tests, page[0]["alert"] if page else None)
    if page:
        _run_hidden(ctx, fresh.stdout, page[0]["alert"], _load(spec))


def _check_spec(ctx: CheckContext, data: Any) -> None:
    slos = data.get("slos") if isinstance(data, dict) else None
    if not isinstance(slos, list) or not slos:
        return
    ctx.require(
        len(slos) == 1,
        f"{SPEC} holds one SLO",
        f"it holds {len(slos)}; this lab grades one: 99.9% of predictions under 500 ms",
    )
    slo = slos[0] if isinstance(slos[0], dict) else {}
    try:
        objective = Decimal(str(slo.get("objective")))
    except InvalidOperation:
        objective = Decimal(0)
    hint = f"objective is {slo.get('objective')!r}; the target is 99.9% of predictions. "
    if objective < 1:
        hint += "Sloth objectives are percentages: write 99.9, not 0.999"
    else:
        hint += (
            "The objective sets the error budget (100 - 99.9 = 0.1% of predictions may be "
            "slow) and with it every alert threshold"
        )
    ctx.require(objective == OBJECTIVE, "the objective is 99.9 (percent)", hint)
    queries = " ".join(
        str(v)
        for kind in ("events", "raw")
        for v in ((slo.get("sli") or {}).get(kind) or {}).values()
    )
    ranges = sorted(set(re.findall(r"\[([^\]]*)\]", queries)) - {"{{.window}}"})
    ctx.require(
        not ranges,
        "every rate() in the SLI uses the window template [{{.window}}]",
        f"your queries also use {', '.join(f'[{r}]' for r in ranges)}. The generator writes "
        "each query once per window (5m, 30m, 1h, ... 3d) by replacing {{.window}}; a fixed "
        "range makes the 1-hour SLI divide 5-minute errors by 1-hour traffic, so the long "
        "windows of the burn-rate alerts stop meaning what they say",
    )
    les = set(re.findall(r'le\s*=\s*"([^"]*)"', queries))
    ctx.require(
        bool(les) and all(_float(le) == 0.5 for le in les),
        'the SLI counts predictions slower than 500 ms with the bucket le="0.5"',
        f"your queries use the buckets {sorted(les) or 'none'}. A prediction is good when it "
        'took 500 ms or less: it is counted in the _bucket series with le="0.5" (0.5 is a '
        "bucket of the histogram: see docs/telemetry.md); the slow ones are _count minus that",
    )


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _check_alerts(
    ctx: CheckContext, page: list[dict[str, Any]], ticket: list[dict[str, Any]]
) -> None:
    ctx.require(
        bool(page) and bool(ticket),
        "the spec has a page alert and a ticket alert",
        "under `alerting:` give the alert a `name:` and do not disable `page_alert` or "
        "`ticket_alert`: the page catches fast burns (the budget gone in days), the ticket "
        "slow ones (gone before the 30 days end)",
    )
    for alerts, severity in ((page, "page"), (ticket, "ticket")):
        if not alerts:
            continue
        labels = alerts[0].get("labels") or {}
        ctx.require(
            labels.get("severity") == severity,
            f"the {severity} alert carries `severity: {severity}`",
            f"it has severity {labels.get('severity')!r}. Sloth adds sloth_severity, but "
            "this project's Alertmanager routes on `severity` "
            f"(deploy/alertmanager/alertmanager.yml): add `labels: {{severity: {severity}}}` "
            f"under alerting.{severity}_alert",
        )
    if page:
        url = str((page[0].get("annotations") or {}).get("runbook_url") or "")
        ctx.require(
            bool(url),
            "the alerts link a runbook (`runbook_url` annotation)",
            "add `annotations: {runbook_url: runbooks/ServescopePredictionsLatencyBudgetBurn.md}` "
            "under `alerting:`: the page someone opens at 3 a.m.",
        )


def _check_own_tests(ctx: CheckContext, path: Path, alert: str | None) -> None:
    data = _load(path)
    if not ctx.require(
        isinstance(data, dict),
        f"{TESTS} is a promtool test file",
        "it must be YAML with rule_files, evaluation_interval and tests",
    ):
        return
    rule_files = [str(p) for p in data.get("rule_files") or []]
    ctx.require(
        any((path.parent / p).resolve() == (ctx.workspace / RULES).resolve() for p in rule_files),
        f"{TESTS} tests your generated {RULES}",
        f"its rule_files list {rule_files!r}; it must name {RULES}",
    )
    cases = [
        case
        for test in data.get("tests") or []
        if isinstance(test, dict)
        for case in test.get("alert_rule_test") or []
        if isinstance(case, dict) and (alert is None or case.get("alertname") == alert)
    ]
    fires = any(
        isinstance(exp, dict) and (exp.get("exp_labels") or {}).get("sloth_severity") == "page"
        for case in cases
        for exp in case.get("exp_alerts") or []
    )
    ctx.require(
        fires,
        "your test proves that a burst pages",
        f"add a test where a burst of slow predictions makes `{alert}` fire with "
        "`sloth_severity: page` (an alert_rule_test with exp_alerts); e.g. 10% of predictions "
        "over 500 ms for 15 minutes after an hour of normal traffic, evaluated 12 minutes in",
    )
    ctx.require(
        any("exp_alerts" in case and not case.get("exp_alerts") for case in cases),
        "your test proves that a trickle does not page",
        f"add a test where a trickle (e.g. 0.05% of predictions over 500 ms for hours) "
        f"leaves `{alert}` silent: an alert_rule_test with `exp_alerts: []`",
    )
    result = ctx.promtool("test", "rules", TESTS)
    ctx.require(
        result.returncode == 0,
        f"`promtool test rules {TESTS}` passes",
        "promtool says: "
        + _tail(result.stdout + result.stderr, 14)
        + ". `exp:` is what you expected, `got:` what the rules did: labels and annotations "
        "must match exactly, so copy them from `got:` once you agree with the alert itself",
    )


def _run_hidden(ctx: CheckContext, rules_text: str, alert: str, spec: Any) -> None:
    hints = {
        "burst": (
            "A burst that burns the budget 100 times too fast must page within minutes: "
            'check that the SLI counts the slow predictions (count minus the le="0.5" '
            "bucket) of stage end_to_end only (or of POST /v1/predict), and that the "
            "objective is 99.9"
        ),
        "slow-burn": (
            "4% slow burns the 0.1% budget 40 times too fast, which must page (5m and 1h "
            "over 14.4x): a 99.5% objective, a 1 s threshold or mixing in the other stages "
            "hides it"
        ),
        "trickle": (
            "0.05% slow is half the budget: no page (not even a ticket). Paging here means "
            "the SLI counts too much as bad: the error_query must count only predictions over "
            '500 ms (_count minus the le="0.5" bucket), not the fast ones, not the 300-500 '
            "ms tail, and the objective must be 99.9, not stricter"
        ),
    }
    text = yaml.safe_dump(spec) if spec is not None else ""
    if 'stage="end_to_end"' not in text and "/v1/predict" not in text:
        for key in hints:
            hints[key] += (
                '. Your SLI selects neither stage="end_to_end" nor http_route="/v1/predict": '
                "the fast stages and probes are mixed in"
            )
    with tempfile.TemporaryDirectory(prefix="servescope-lab-") as tmp:
        rules_path = Path(tmp) / "rules.yml"
        rules_path.write_text(rules_text)
        for scenario in SCENARIOS:
            path = Path(tmp) / f"{scenario.key}.test.yml"
            path.write_text(
                yaml.safe_dump(scenario_test(scenario, rules_path, alert), sort_keys=False)
            )
            result = ctx.promtool("test", "rules", str(path))
            ctx.require(
                result.returncode == 0,
                f"hidden test: {scenario.criterion}",
                _observed(result.stdout + result.stderr) + hints[scenario.key],
            )
