"""Checker for intermediate/03-p95-alert: the learner's p95 alert and its promtool test.

1. `promtool check rules alerts.yml` accepts the file, and it holds the alert
   ServescopeP95LatencyHigh with `for: 5m`, a severity label and summary and runbook_url
   annotations.
2. The learner's own `promtool test rules alerts.test.yml` passes, tests alerts.yml, and has
   a case where the alert fires and one where it stays silent.
3. Hidden scenarios, generated here into a temporary folder the learner never sees, run
   through promtool against the learner's alerts.yml: a sustained slowdown must fire after
   5 minutes (not before); a healthy service with a slow tail, a 3-minute spike, a few very
   slow requests that drag the average (not the p95) up must stay silent; a p95 that is
   high while the average is low must fire. Together they reject averages, a missing
   rate(), a missing `by (le)`, the wrong quantile or threshold unit, a missing stage filter
   and a wrong `for`.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

ALERT = "ServescopeP95LatencyHigh"
RULES = "alerts.yml"
TESTS = "alerts.test.yml"
SEVERITIES = ("page", "ticket")

# The histogram's buckets (services/telemetry/.../contract.yaml), as prometheus_client
# writes the `le` label.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)
STEP_SECONDS = 15  # scrape interval of the hidden series
STEPS_PER_MINUTE = 60 // STEP_SECONDS
HISTORY_STEPS = 7 * 24 * 60 * STEPS_PER_MINUTE  # a week of uptime before the test starts
INSTANCES = ("10.42.0.17:8000", "10.42.1.23:8000")
STAGES = ("decode", "preprocess", "infer", "postprocess")

# A distribution: (latency in seconds, requests per scrape interval per instance).
Mix = tuple[tuple[float, int], ...]
FAST: Mix = ((0.03, 70), (0.06, 25), (0.09, 5))  # p95 ~ 80 ms
STAGE_FAST: Mix = ((0.002, 60), (0.008, 40))  # every other stage: a few ms


class Phase(NamedTuple):
    minutes: int
    end_to_end: Mix
    infer: Mix = STAGE_FAST  # the stage that is slow when end_to_end is


class Scenario(NamedTuple):
    key: str
    criterion: str
    history: Mix  # what the counters accumulated before the test (a week of it)
    phases: tuple[Phase, ...]
    firing_at: tuple[int, ...]  # minutes at which the alert must be firing
    silent_at: tuple[int, ...]  # minutes at which it must not be


SCENARIOS = (
    Scenario(
        "sustained",
        "a sustained slowdown (p95 ~290 ms from minute 10 on) fires after 5 minutes, not before",
        history=FAST,
        phases=(
            Phase(10, FAST),
            Phase(20, ((0.03, 40), (0.07, 10), (0.28, 50)), ((0.002, 50), (0.27, 50))),
        ),
        firing_at=(17, 22, 29),
        silent_at=(5, 10, 14),
    ),
    Scenario(
        "healthy-tail",
        "a healthy service (p95 ~190 ms, 3% of requests at 300-500 ms) stays silent",
        # Last week had an incident: a tenth of all requests took 2 s.
        history=((0.03, 60), (0.06, 30), (2.0, 10)),
        phases=(Phase(30, ((0.06, 80), (0.15, 17), (0.4, 3))),),
        firing_at=(),
        silent_at=(6, 10, 15, 20, 25, 30),
    ),
    Scenario(
        "short-spike",
        "a 3-minute spike (p95 250 ms from minute 10 to 13) stays silent",
        history=FAST,
        phases=(
            Phase(10, FAST),
            Phase(3, ((0.03, 70), (0.06, 20), (0.25, 10)), ((0.002, 90), (0.24, 10))),
            Phase(17, FAST),
        ),
        firing_at=(),
        silent_at=tuple(range(10, 31)),
    ),
    Scenario(
        "average-high",
        "a few 6-second requests (4%) push the average to ~270 ms while p95 stays ~40 ms: silent",
        history=FAST,
        phases=(Phase(30, ((0.03, 96), (6.0, 4)), ((0.002, 96), (5.9, 4))),),
        firing_at=(),
        silent_at=(6, 10, 15, 20, 25, 30),
    ),
    Scenario(
        "p95-high",
        "12% of requests at 250 ms (p95 ~260 ms, average only ~40 ms) from minute 10 fires",
        history=FAST,
        phases=(
            Phase(10, FAST),
            Phase(20, ((0.01, 88), (0.25, 12)), ((0.002, 88), (0.24, 12))),
        ),
        firing_at=(17, 22, 29),
        silent_at=(10,),
    ),
)


# --- small helpers --------------------------------------------------------------------------


def _le(bound: float) -> str:
    """The `le` label as prometheus_client writes it (1.0, not 1)."""
    return repr(float(bound))


def _bucket_of(latency: float) -> int:
    for index, bound in enumerate(BUCKETS):
        if latency <= bound:
            return index
    return len(BUCKETS)  # +Inf


def _notation(values: Sequence[float]) -> str:
    """promtool's expanding notation ('a+bxn' runs) for a list of sample values."""
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        if i + 1 < len(values):
            step = values[i + 1] - values[i]
            j = i + 1
            while j + 1 < len(values) and values[j + 1] - values[j] == step:
                j += 1
        else:
            step = 0
        start = f"{values[i]:.6f}".rstrip("0").rstrip(".")
        inc = f"{abs(step):.6f}".rstrip("0").rstrip(".") or "0"
        parts.append(f"{start}{'-' if step < 0 else '+'}{inc}x{j - i}")
        i = j + 1
    return " ".join(parts)


def _histogram_series(
    name: str, labels: dict[str, str], history: Mix, mixes: Sequence[Mix]
) -> list[dict[str, str]]:
    """_bucket, _count and _sum series of one histogram, one value per scrape."""

    def per_step(mix: Mix) -> tuple[list[int], int, float]:
        buckets = [0] * (len(BUCKETS) + 1)
        for latency, count in mix:
            buckets[_bucket_of(latency)] += count
        cumulative = [sum(buckets[: i + 1]) for i in range(len(buckets))]
        return cumulative, sum(buckets), sum(lat * n for lat, n in mix)

    hist_cum, hist_count, hist_sum = per_step(history)
    cum = [c * HISTORY_STEPS for c in hist_cum]
    count = hist_count * HISTORY_STEPS
    total = hist_sum * HISTORY_STEPS
    rows_b: list[list[float]] = [[] for _ in cum]
    rows_c: list[float] = []
    rows_s: list[float] = []
    for mix in mixes:
        step_cum, step_count, step_sum = per_step(mix)
        cum = [a + b for a, b in zip(cum, step_cum, strict=True)]
        count += step_count
        total += step_sum
        for row, value in zip(rows_b, cum, strict=True):
            row.append(value)
        rows_c.append(count)
        rows_s.append(round(total, 3))

    def series(suffix: str, extra: dict[str, str]) -> str:
        merged = {**labels, **extra}
        inner = ", ".join(f'{k}="{v}"' for k, v in merged.items())
        return f"{name}{suffix}{{{inner}}}"

    out = []
    for index, row in enumerate(rows_b):
        le = _le(BUCKETS[index]) if index < len(BUCKETS) else "+Inf"
        out.append({"series": series("_bucket", {"le": le}), "values": _notation(row)})
    out.append({"series": series("_count", {}), "values": _notation(rows_c)})
    out.append({"series": series("_sum", {}), "values": _notation(rows_s)})
    return out


def scenario_test(scenario: Scenario, rules_path: Path) -> dict[str, Any]:
    """A promtool test file for one hidden scenario."""
    steps_e2e: list[Mix] = []
    steps_infer: list[Mix] = []
    for phase in scenario.phases:
        for _ in range(phase.minutes * STEPS_PER_MINUTE):
            steps_e2e.append(phase.end_to_end)
            steps_infer.append(phase.infer)
    # One more scrape so the last minute has data.
    steps_e2e.append(steps_e2e[-1])
    steps_infer.append(steps_infer[-1])
    input_series: list[dict[str, str]] = []
    for instance in INSTANCES:
        base = {"namespace": "servescope", "job": "preprocess", "instance": instance}
        input_series += _histogram_series(
            "servescope_stage_duration_seconds",
            {**base, "stage": "end_to_end"},
            scenario.history,
            steps_e2e,
        )
        for stage in STAGES:
            input_series += _histogram_series(
                "servescope_stage_duration_seconds",
                {**base, "stage": stage},
                STAGE_FAST,
                steps_infer if stage == "infer" else [STAGE_FAST] * len(steps_e2e),
            )
    query = f'max(ALERTS{{alertname="{ALERT}", alertstate="firing"}})'
    checks = [
        {"expr": query, "eval_time": f"{m}m", "exp_samples": [{"labels": "{}", "value": 1}]}
        for m in scenario.firing_at
    ] + [{"expr": query, "eval_time": f"{m}m", "exp_samples": []} for m in scenario.silent_at]
    return {
        "rule_files": [str(rules_path)],
        "evaluation_interval": f"{STEP_SECONDS}s",
        "tests": [
            {
                "name": scenario.key,
                "interval": f"{STEP_SECONDS}s",
                "input_series": input_series,
                "promql_expr_test": checks,
            }
        ],
    }


def _duration_seconds(text: Any) -> float | None:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", str(text or ""))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        return None
    return float(sum(int(n) * units[u] for n, u in parts))


def _tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _load_yaml(path: Path) -> tuple[Any, str | None]:
    try:
        return yaml.safe_load(path.read_text()), None
    except yaml.YAMLError as exc:
        return None, str(exc).replace("\n", " ")


def _alert_rule(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, dict):
        return None
    for group in data.get("groups") or []:
        for rule in (group or {}).get("rules") or []:
            if isinstance(rule, dict) and rule.get("alert") == ALERT:
                return rule
    return None


# --- the hints for a failed scenario, from what the expression looks like ------------------


def _expr_hints(expr: str) -> list[str]:
    hints = []
    compact = re.sub(r"\s+", "", expr)
    if "histogram_quantile" not in compact:
        hints.append(
            "your expression has no histogram_quantile(): sum/count is the AVERAGE latency, "
            "which a few very slow requests drag up and a slow tail hides; p95 comes from "
            "histogram_quantile(0.95, ...) over the _bucket series"
        )
    elif "histogram_quantile(0.95," not in compact:
        hints.append("p95 is histogram_quantile(0.95, ...): check the first argument")
    if "rate(" not in compact and "increase(" not in compact:
        hints.append(
            "the _bucket series are counters that only grow since the process started (a "
            "week here): without rate(...[5m]) you measure the p95 of the whole week, which "
            "barely moves during an incident and remembers last week's"
        )
    if (
        "histogram_quantile" in compact
        and "sum" in compact
        and not re.search(r"by\([^)]*\ble\b", compact)
        and "without(" not in compact
    ):
        hints.append(
            "sum(...) without `by (le)` adds every bucket together and drops the `le` "
            "label that histogram_quantile needs: write sum by (le) (rate(...))"
        )
    if 'stage="end_to_end"' not in compact:
        hints.append(
            'select only stage="end_to_end": without it the fast decode/preprocess/... '
            "stages are mixed into the p95 and hide a slow prediction"
        )
    windows = [_duration_seconds(w) or 0 for w in re.findall(r"\[([0-9a-z]+)\]", compact)]
    if any(w > 300 for w in windows):
        hints.append(
            "a rate window longer than [5m] averages the slowdown with older, faster "
            "minutes, so the alert starts (and fires) later than 5 minutes in"
        )
    if re.search(r">=?(200|150|250)\b", compact):
        hints.append("Prometheus measures seconds: 200 ms is 0.2")
    return hints


SCENARIO_HINTS = {
    "sustained": (
        "p95 jumps to ~290 ms at minute 10, so the alert should be pending from about "
        "minute 10 and firing from minute 15-16 (5 minutes later), not earlier; check the "
        "`for:` duration (5m) and that the expression is above 0.2 while p95 is ~290 ms"
    ),
    "healthy-tail": (
        "It fired although p95 is under 200 ms. A higher quantile (0.99) or the all-time "
        "p95 (no rate()) would fire here; so would the wrong threshold"
    ),
    "short-spike": (
        "It fired on a spike that lasted 3 minutes: `for: 5m` makes Prometheus wait until "
        "the condition has held for 5 minutes before it fires"
    ),
    "average-high": (
        "It fired on a high AVERAGE although p95 is ~40 ms: use histogram_quantile(0.95, ...) "
        "on the _bucket series, not _sum / _count"
    ),
    "p95-high": (
        "It stayed silent although p95 is ~260 ms (only the average is low): a quantile of "
        "the end_to_end stage alone, not an average and not every stage mixed together, "
        "over the last 5 minutes ([5m]: a longer window reacts later)"
    ),
}


# --- the check ------------------------------------------------------------------------------


def check(ctx: CheckContext) -> None:
    rules_path = ctx.workspace / RULES
    tests_path = ctx.workspace / TESTS
    have_rules = ctx.require(
        rules_path.is_file(),
        f"{RULES} exists in your workspace",
        f"create {RULES} in {ctx.workspace} (`servescope lab start` copies a starter there)",
    )
    have_tests = ctx.require(
        tests_path.is_file(),
        f"{TESTS} exists in your workspace",
        f"create {TESTS} next to {RULES}: the promtool unit test of your alert",
    )
    if not have_rules:
        return

    result = ctx.promtool("check", "rules", RULES)
    rules_ok = ctx.require(
        result.returncode == 0,
        f"`promtool check rules {RULES}` accepts your file",
        "promtool says: "
        + _tail(result.stdout + result.stderr)
        + f". Run `promtool check rules {RULES}` in your workspace and fix what it names "
        "(every rule needs an `alert:` name and an `expr:`; indentation matters in YAML)",
    )
    data, _ = _load_yaml(rules_path)
    rule = _alert_rule(data)
    ctx.require(
        rule is not None,
        f"{RULES} defines an alert named {ALERT}",
        f"add a rule `- alert: {ALERT}` under `groups: - name: ... rules:` (the hidden "
        "tests look for that exact name)",
    )
    if rule is not None:
        _check_rule_fields(ctx, rule)

    if have_tests:
        _check_own_tests(ctx, tests_path)

    if not rules_ok or rule is None or not isinstance(rule.get("expr"), str | int | float):
        return
    _run_hidden(ctx, rules_path, str(rule.get("expr")))


def _check_rule_fields(ctx: CheckContext, rule: dict[str, Any]) -> None:
    wait = _duration_seconds(rule.get("for"))
    ctx.require(
        wait == 300,
        "the alert waits 5 minutes before it fires (`for: 5m`)",
        f"`for:` is {rule.get('for')!r}; set `for: 5m` so a short blip (a GC pause, one "
        "slow deploy) only makes the alert pending, and it fires when p95 has stayed above "
        "200 ms for 5 minutes",
    )
    labels = rule.get("labels") or {}
    ctx.require(
        isinstance(labels, dict) and labels.get("severity") in SEVERITIES,
        "the alert has a `severity` label, page or ticket",
        f"add `labels: {{severity: page}}`: Alertmanager routes on it "
        "(deploy/alertmanager/alertmanager.yml: page wakes someone up, ticket waits for the "
        f"working day); found {labels.get('severity') if isinstance(labels, dict) else None!r}",
    )
    annotations = rule.get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    ctx.require(
        bool(str(annotations.get("summary") or "").strip()),
        "the alert has a `summary` annotation",
        "add `annotations: {summary: ...}`: one line a person reads in the notification, "
        "e.g. 'p95 end-to-end prediction latency is over 200 ms.'",
    )
    url = str(annotations.get("runbook_url") or "").strip()
    exists = bool(url) and (
        re.match(r"^[a-z][a-z0-9+.-]*://", url) is not None
        or (ctx.root / url.lstrip("/")).is_file()
    )
    ctx.require(
        exists,
        "the alert has a `runbook_url` annotation that points at a runbook",
        (
            f"runbook_url {url!r} is not a URL and no such file exists in the repository; "
            if url
            else "add a runbook_url annotation; "
        )
        + "this project's pages live in runbooks/: runbooks/ServescopeP95LatencyHigh.md",
    )


def _check_own_tests(ctx: CheckContext, tests_path: Path) -> None:
    data, error = _load_yaml(tests_path)
    if not ctx.require(
        isinstance(data, dict),
        f"{TESTS} is a promtool test file",
        f"it must be YAML with rule_files, evaluation_interval and tests ({error or 'empty'})",
    ):
        return
    rule_files = [str(p) for p in data.get("rule_files") or []]
    ctx.require(
        any(
            (tests_path.parent / p).resolve() == (ctx.workspace / RULES).resolve()
            for p in rule_files
        ),
        f"{TESTS} tests your {RULES}",
        f"its rule_files list {rule_files!r}; it must name {RULES} (paths are relative to "
        "the test file)",
    )
    cases = [
        case
        for test in data.get("tests") or []
        if isinstance(test, dict)
        for case in test.get("alert_rule_test") or []
        if isinstance(case, dict) and case.get("alertname") == ALERT
    ]
    ctx.require(
        any(case.get("exp_alerts") for case in cases),
        f"your test has a case where {ALERT} fires",
        "add a test with input_series where p95 is over 200 ms for more than 5 minutes "
        f"and an alert_rule_test with `alertname: {ALERT}`, an eval_time after those 5 "
        "minutes and the exp_alerts (labels and annotations) you expect",
    )
    ctx.require(
        any("exp_alerts" in case and not case.get("exp_alerts") for case in cases),
        f"your test has a case where {ALERT} stays silent",
        "prove the other side too: an alert_rule_test with `exp_alerts: []`, e.g. while "
        "the alert is still pending (before 5 minutes) or with p95 just under 200 ms",
    )
    result = ctx.promtool("test", "rules", TESTS)
    ctx.require(
        result.returncode == 0,
        f"`promtool test rules {TESTS}` passes",
        "promtool says: "
        + _tail(result.stdout + result.stderr)
        + ". `exp:` is what your test expected and `got:` what the alert did; either the "
        "alert or the expectation is wrong (labels and annotations must match exactly, "
        "with the templates filled in)",
    )


def _observed(output: str) -> str:
    """What the alert did at the moments the scenario looked, from promtool's report."""
    fired: list[str] = []
    silent: list[str] = []
    for when, expected in re.findall(r"time: ([0-9a-z]+),\s*exp: (nil|\{\})", output):
        (fired if expected == "nil" else silent).append(when)
    said = []
    if fired:
        said.append("Your alert was firing at " + ", ".join(fired) + " where it should not")
    if silent:
        said.append(
            ("it" if fired else "Your alert")
            + " was not firing at "
            + ", ".join(silent)
            + " where it should"
        )
    if not said:
        return "promtool: " + _tail(output, 6) + ". "
    return "; ".join(said) + ". "


def _run_hidden(ctx: CheckContext, rules_path: Path, expr: str) -> None:
    hints = _expr_hints(expr)
    with tempfile.TemporaryDirectory(prefix="servescope-lab-") as tmp:
        for scenario in SCENARIOS:
            path = Path(tmp) / f"{scenario.key}.test.yml"
            path.write_text(
                yaml.safe_dump(scenario_test(scenario, rules_path.resolve()), sort_keys=False)
            )
            result = ctx.promtool("test", "rules", str(path))
            hint = _observed(result.stdout + result.stderr) + SCENARIO_HINTS[scenario.key]
            if hints:
                hint += ". In your expression: " + "; ".join(hints)
            ctx.require(result.returncode == 0, f"hidden test: {scenario.criterion}", hint)
