"""Checker for beginner/02-red-queries: the learner's three PromQL queries in
work/queries.yaml, run against the lab's live Prometheus.

Each query is evaluated at one instant, beside this checker's own reference computation at
the same instant and over the same range window the learner chose, and must agree within a
small tolerance. When it does not, the learner's value is compared with the values of the
usual mistakes (probes counted as traffic, a counter without rate(), 4xx counted as errors,
a mean for a percentile, ...) to say which one it is.
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING

import yaml

from servescope.cli.labs import NOT_TRAFFIC, QueryError

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

LAB = "beginner/02-red-queries"
KEYS = ("rate", "error_ratio", "p95_seconds")
WHAT = {
    "rate": "the edge's request rate",
    "error_ratio": "the edge's error ratio",
    "p95_seconds": "the edge's p95 latency",
}
METRIC = "http_server_request_duration_seconds"
EDGE = f'job="preprocess", http_route!~"{NOT_TRAFFIC}"'
ALL_ROUTES = 'job="preprocess"'
ALL_JOBS = f'http_route!~"{NOT_TRAFFIC}"'
FIVE_XX = ', http_response_status_code=~"5.."'
FOUR_OR_FIVE_XX = ', http_response_status_code=~"[45].."'
NOT_FIVE_XX = ', http_response_status_code!~"5.."'
_WINDOW = re.compile(r"\[\s*([0-9]+(?:ms|[smhdwy]))\s*(?::[^\]]*)?\]")


def _requests(window: str, where: str = EDGE, extra: str = "") -> str:
    return f"sum(rate({METRIC}_count{{{where}{extra}}}[{window}]))"


def _p95(window: str, where: str = EDGE, q: float = 0.95) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({METRIC}_bucket{{{where}}}[{window}])))"


def reference(key: str, window: str) -> str:
    if key == "rate":
        return _requests(window)
    if key == "error_ratio":
        return f"({_requests(window, extra=FIVE_XX)} or vector(0)) / {_requests(window)}"
    return _p95(window)


def mistakes(key: str, window: str) -> list[tuple[str, str]]:
    """(query, what it means) for the wrong-but-plausible answers to `key`."""
    probes = (
        "it counts the probes and scrapes (/healthz, /readyz, /metrics) as traffic: a "
        "kubelet's probes are not users. Leave them out with "
        'http_route!~"/metrics|/healthz|/readyz"'
    )
    if key == "rate":
        return [
            (_requests(window, ALL_ROUTES), probes),
            (
                f"sum({METRIC}_count{{{EDGE}}})",
                "that is the counter's raw value, every request since the process started. "
                f"A counter only goes up: rate(...[{window}]) turns it into requests per second",
            ),
            (
                f"sum(increase({METRIC}_count{{{EDGE}}}[{window}]))",
                f"increase() gives requests per {window}; the rate is per second: rate()",
            ),
            (_requests(window, ALL_JOBS), 'it adds up all three services: keep job="preprocess"'),
        ]
    if key == "error_ratio":
        every = _requests(window)
        fives = _requests(window, extra=FIVE_XX)
        return [
            (
                f"{_requests(window, extra=FOUR_OR_FIVE_XX)} / {every}",
                "it counts 4xx as errors. 4xx are uploads the edge rightly refused (empty, "
                "too large, not an image): the client's mistake, not a failure of the "
                'service. Server errors are http_response_status_code=~"5.."',
            ),
            (
                f"({fives} or vector(0)) / {_requests(window, ALL_ROUTES)}",
                "its denominator counts the probes and scrapes: they are not requests users "
                "made, so they dilute the ratio",
            ),
            (
                f"{_requests(window, extra=NOT_FIVE_XX)} / {every}",
                "that is the success ratio; the error ratio is 5xx over all requests",
            ),
            (
                fives,
                "that is errors per second, not a ratio: divide by all requests per second",
            ),
            (
                f"100 * ({fives} or vector(0)) / {every}",
                "that is a percentage; the ratio is between 0 and 1",
            ),
        ]
    return [
        (_p95(window, ALL_ROUTES), probes),
        (
            f"sum(rate({METRIC}_sum{{{EDGE}}}[{window}])) / sum(rate({METRIC}_count{{{EDGE}}}[{window}]))",
            "that is the mean, not the 95th percentile: read it from the _bucket series "
            "with histogram_quantile(0.95, ...)",
        ),
        (f"1000 * {_p95(window)}", "that is milliseconds; the histogram's unit is seconds"),
        (_p95(window, q=0.99), "that is the 99th percentile; the question asks for the 95th"),
        (_p95(window, q=0.5), "that is the median; the question asks for the 95th percentile"),
        (
            f'histogram_quantile(0.95, sum by (le) (rate(servescope_stage_duration_seconds_bucket{{stage="end_to_end"}}[{window}])))',
            f"that is the pipeline's own end_to_end stage; the question is the HTTP server's "
            f"view of every request, {METRIC}",
        ),
    ]


def _close(key: str, mine: float, theirs: float) -> bool:
    if math.isnan(mine) or math.isnan(theirs):
        return math.isnan(mine) and math.isnan(theirs)
    slack = 0.002 if key == "error_ratio" else 1e-9
    return abs(mine - theirs) <= max(slack, 0.02 * abs(theirs))


def _one(ctx: CheckContext, expr: str, at: float) -> float | None:
    try:
        samples = ctx.query(expr, at=at)
    except QueryError:
        return None
    return samples[0].value if len(samples) == 1 else None


def _format(key: str, value: float) -> str:
    if key == "rate":
        return f"{value:.3g}/s"
    if key == "error_ratio":
        return f"{value:.3f}"
    return f"{value * 1000:.1f} ms" if value < 100 else f"{value:.3g}"


def check(ctx: CheckContext) -> None:
    path = ctx.workspace / "queries.yaml"
    try:
        answers = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        ctx.fail(
            "work/queries.yaml is valid YAML",
            f"{exc}. `servescope lab reset {LAB}` gives you the starter back",
        )
        return
    if not isinstance(answers, dict):
        ctx.fail("work/queries.yaml maps rate, error_ratio and p95_seconds to queries")
        return
    at = time.time()
    baseline = _one(ctx, reference("rate", "1m"), at)
    if not ctx.require(
        baseline and baseline > 0,
        "the edge has traffic in the lab's Prometheus",
        f"no requests in the last minute: is the lab running? `servescope lab start {LAB}` "
        "starts the services, Prometheus and the traffic",
    ):
        return
    for key in KEYS:
        expr = str(answers.get(key) or "").strip()
        criterion = f"{key}: your query gives {WHAT[key]}"
        if not expr:
            ctx.fail(criterion, f"write a PromQL expression for {key} in work/queries.yaml")
            continue
        try:
            samples = ctx.query(expr, at=at)
        except QueryError as exc:
            hint = f"Prometheus refuses it: {exc}"
            if "$" in expr:
                hint += ". Grafana variables ($__rate_interval, ...) mean nothing to Prometheus: write [1m]"
            ctx.fail(criterion, hint)
            continue
        if len(samples) != 1:
            ctx.fail(
                criterion,
                f"it returns {len(samples)} series; the question wants one number for the whole "
                "edge"
                + (
                    ": sum() the series (for a percentile, sum by (le) inside histogram_quantile)"
                    if samples
                    else ". No data: try it at http://127.0.0.1:9090 and check the metric "
                    "and label names"
                ),
            )
            continue
        found = _WINDOW.search(expr)
        window = found.group(1) if found else "1m"
        mine = samples[0].value
        expected = _one(ctx, reference(key, window), at)
        if expected is None:
            ctx.fail(criterion, "the checker's reference query returned nothing; try again")
            continue
        if _close(key, mine, expected):
            ctx.ok(f"{criterion} ({_format(key, mine)})")
            continue
        diagnosis = next(
            (
                meaning
                for wrong, meaning in mistakes(key, window)
                if (value := _one(ctx, wrong, at)) is not None and _close(key, mine, value)
            ),
            None,
        )
        if diagnosis is None and not found:
            diagnosis = (
                "there is no range like [1m] in it: a counter's raw value counts every "
                "request since the process started; rate(...[1m]) makes it per second"
            )
        ctx.fail(
            f"{criterion}: yours is {_format(key, mine)}, the edge's is {_format(key, expected)} "
            f"(both over [{window}] at the same instant)",
            diagnosis
            or f"compare your query with the metric's series at http://127.0.0.1:9090; "
            f"`servescope lab hint {LAB}` helps",
        )
