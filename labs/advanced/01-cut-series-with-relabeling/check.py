"""Checker for advanced/01-cut-series-with-relabeling.

The learner's `metric_relabel_configs` (work/relabel.yml) are merged into the scrape jobs of
the three services in the lab's Prometheus configuration; `promtool check config` must
accept the result; the lab's Prometheus reloads it (POST /-/reload, the lab starts it with
--web.enable-lifecycle) and scrapes a few times with traffic flowing. Then:

1. at least 40% fewer series are kept than the services expose: the sum over the three
   jobs of `scrape_samples_post_metric_relabeling` (kept, after the rules) against
   `scrape_samples_scraped` (exposed, before them), at the same scrape, so traffic cannot
   skew the comparison; `count({job=...})` of the head confirms it;
2. every metric name an alert rule or recording rule (deploy/prometheus/rules), a dashboard
   query (dashboards/*.json) or the responder's playbooks (services/responder) reads, and
   that the services exposed before the rules, still has series;
3. every series selector of those rules and queries that matched series before the rules
   (the last instant before the checker first loaded them) still matches, and a `_bucket`
   selector still has every `le` it had (histogram_quantile needs all of them);
4. no series collide (a `labeldrop` that leaves two series with the same labels):
   Prometheus's duplicate and out-of-order sample counters do not move, and every target
   is up.
"""

from __future__ import annotations

import glob
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from servescope.cli import promql
from servescope.cli.dashboard_render import substitute
from servescope.cli.labs import QueryError
from servescope.cli.labs.processes import http
from servescope.cli.labs.store import Store

if TYPE_CHECKING:
    from servescope.cli.labs import CheckContext

LAB = "advanced/01-cut-series-with-relabeling"
SERVICES = ("preprocess", "classifier", "postprocess")
JOBS = 'job=~"preprocess|classifier|postprocess"'
# Series the services expose, not those Prometheus makes (rules, alerts, scrape health).
SCRAPED = JOBS + ', __name__!~"ALERTS.*|up|scrape_.*|.*:.*"'
TARGET = 0.40
MARK = "servescope-lab-relabel"  # a key in the merged config: the learner's rules are loaded
SETTLE_SECONDS = 4.0  # scrapes every second: the new rules act on 3-4 scrapes
COLLISIONS = (
    "prometheus_target_scrapes_sample_duplicate_timestamp_total",
    "prometheus_target_scrapes_sample_out_of_order_total",
)


# --- what the project reads -------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))
    return found


def readers(root: Path) -> list[tuple[str, str]]:
    """(who reads it, PromQL) for every rule and dashboard query of the project."""
    found: list[tuple[str, str]] = []
    for path in sorted(glob.glob(str(root / "deploy/prometheus/rules/*.yml"))):
        for group in (yaml.safe_load(Path(path).read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert") or rule.get("record")
                kind = "alert" if "alert" in rule else "recording rule"
                found.append((f"{kind} {name} ({Path(path).name})", str(rule["expr"])))
    for path in sorted(glob.glob(str(root / "dashboards/*.json"))):
        board = json.loads(Path(path).read_text())
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("type") == "loki" or not target.get("expr"):
                    continue
                found.append(
                    (
                        f"dashboard {Path(path).stem}, panel {panel.get('title')!r}",
                        substitute(target["expr"]),
                    ),
                )
    return found


def responder_names(root: Path, exposed: set[str]) -> set[str]:
    """Metric names the responder's playbooks read (its queries are built in code)."""
    text = "\n".join(
        Path(p).read_text()
        for p in glob.glob(str(root / "services/responder/src/**/*.py"), recursive=True)
    )
    return {name for name in exposed if re.search(rf"\b{re.escape(name)}\b", text)}


def _selector_text(selector: promql.Selector) -> str:
    matchers = [f'{label}{op}"{value}"' for label, op, value in selector.matchers]
    return f"{selector.metric}{{{', '.join(matchers)}}}" if matchers else str(selector.metric)


# --- Prometheus -------------------------------------------------------------------------


def _value(ctx: CheckContext, expr: str, at: float | None = None) -> float:
    samples = ctx.query(expr, at=at)
    return sum(s.value for s in samples)


def _exposed_names(ctx: CheckContext, at: float | None = None) -> set[str]:
    """Metric names with series from the services: now, or in the minute before `at`."""
    selector = f"{{{SCRAPED}}}" if at is None else f"last_over_time({{{SCRAPED}}}[1m])"
    samples = ctx.query(f"count by (__name__) ({selector})", at=at)
    return {s.labels.get("__name__", "") for s in samples} - {""}


def _load(ctx: CheckContext, rules: list[Any]) -> str | None:
    """Merge, promtool, write and reload; None when loaded, else what went wrong."""
    config_path = Store(ctx.run_dir).prometheus_dir / "prometheus.yml"
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return f"cannot read the lab's Prometheus configuration {config_path}: {exc}"
    for job in config.get("scrape_configs", []):
        if job.get("job_name") in SERVICES:
            if rules:
                job["metric_relabel_configs"] = rules
            else:
                job.pop("metric_relabel_configs", None)
    candidate = config_path.with_name("prometheus.candidate.yml")
    candidate.write_text(yaml.safe_dump(config, sort_keys=False))
    result = ctx.promtool("check", "config", candidate)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        return "promtool check config refuses it: " + " ".join(message[-3:])
    # Marked with a comment (promtool refuses unknown keys), so the next check knows.
    text = candidate.read_text()
    config_path.write_text(f"# {MARK}: work/relabel.yml merged by the lab's checker\n{text}")
    status, body = http("POST", f"{ctx.prometheus}/-/reload", b"", timeout=30)
    if status != 200:
        return f"Prometheus refused the reload ({status}): {body.decode(errors='replace')[:300]}"
    return None


def _loaded(config_path: Path) -> bool:
    try:
        return config_path.read_text().startswith(f"# {MARK}")
    except OSError:
        return False


# --- the check --------------------------------------------------------------------------


def check(ctx: CheckContext) -> None:
    path = ctx.workspace / "relabel.yml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        ctx.fail(
            "work/relabel.yml is valid YAML",
            f"{exc}. `servescope lab reset {LAB}` gives you the starter back",
        )
        return
    rules = data.get("metric_relabel_configs") if isinstance(data, dict) else None
    if not ctx.require(
        isinstance(rules, list),
        "work/relabel.yml has a metric_relabel_configs list",
        "keep the starter's shape: `metric_relabel_configs:` followed by a list of rules "
        "(- source_labels: [__name__] / regex: ... / action: drop)",
    ):
        return
    assert isinstance(rules, list)

    config_path = Store(ctx.run_dir).prometheus_dir / "prometheus.yml"
    if not _loaded(config_path) or "baseline_at" not in ctx.state:
        # No rules of the learner's in this Prometheus yet (the lab's first check, or a
        # Prometheus started again): until now it kept every series, so this instant is the
        # baseline for "still answers".
        ctx.state["baseline_at"] = time.time() - 1
        ctx.save_state()
    baseline_at = float(ctx.state["baseline_at"])
    before_collisions = {name: _value(ctx, f"sum({name})") for name in COLLISIONS}
    problem = _load(ctx, rules)
    if not ctx.require(
        problem is None,
        "promtool accepts the configuration with your rules, and Prometheus loaded it",
        problem or "",
    ):
        return
    time.sleep(SETTLE_SECONDS)

    # 1. Fewer series.
    scraped = _value(ctx, f"sum(scrape_samples_scraped{{{JOBS}}})")
    kept = _value(ctx, f"sum(scrape_samples_post_metric_relabeling{{{JOBS}}})")
    in_head = _value(ctx, f"count({{{SCRAPED}}})")
    if not ctx.require(
        scraped > 0, "the services are scraped", f"is the lab running? `servescope lab start {LAB}`"
    ):
        return
    cut = 1 - kept / scraped
    ctx.require(
        rules and cut >= TARGET,
        f"at least {TARGET:.0%} fewer series kept ({scraped:.0f} exposed, {kept:.0f} kept, "
        f"{in_head:.0f} in the head: {cut:.0%} fewer)",
        "no rules yet: add drop rules to work/relabel.yml"
        if not rules
        else "find the biggest metrics nobody reads: "
        f"topk(10, count by (__name__) ({{{JOBS}}})) at http://127.0.0.1:9090, then check "
        "each name against the rules, the dashboards and the responder",
    )

    # 2. Every metric the project reads still has series.
    exposed_before = _exposed_names(ctx, baseline_at)
    exposed_now = _exposed_names(ctx)
    users: dict[str, list[str]] = {}
    selectors: dict[str, tuple[promql.Selector, list[str]]] = {}
    for who, expr in readers(ctx.root):
        try:
            found = promql.selectors(expr)
        except promql.PromQLError:
            continue
        for selector in found:
            if selector.metric in exposed_before:
                users.setdefault(selector.metric, []).append(who)
                key = _selector_text(selector)
                selectors.setdefault(key, (selector, []))[1].append(who)
    for name in responder_names(ctx.root, exposed_before):
        users.setdefault(name, []).append("the responder's playbooks (services/responder)")
    missing = sorted(name for name in users if name not in exposed_now)
    if missing:
        for name in missing:
            who = sorted(set(users[name]))
            hint = f"read by {who[0]}" + (f" and {len(who) - 1} more" if len(who) > 1 else "")
            if name.endswith("_bucket"):
                hint += (
                    ". histogram_quantile() computes a p95 from the buckets: without them the "
                    "latency alerts and panels answer nothing. Drop the buckets of histograms "
                    "nobody queries, not every _bucket"
                )
            ctx.fail(f"{name} still has series", hint)
    else:
        ctx.ok(
            f"every metric the rules, dashboards and responder read still has series "
            f"({len(users)} names)"
        )

    # 3. Every selector that answered before still answers, with every bucket.
    broken = []
    for key, (selector, who) in sorted(selectors.items()):
        if selector.metric in missing:
            continue  # already reported by name
        try:
            before = _value(ctx, f"count(last_over_time({key}[1m]))", at=baseline_at)
            now = _value(ctx, f"count({key})")
        except QueryError:
            continue
        if before > 0 and now == 0:
            broken.append((key, who, "matches no series any more"))
            continue
        if selector.metric and selector.metric.endswith("_bucket") and before > 0:
            les_before = _value(
                ctx, f"count(count by (le) (last_over_time({key}[1m])))", at=baseline_at
            )
            les_now = _value(ctx, f"count(count by (le) ({key}))")
            if les_now < les_before:
                broken.append(
                    (
                        key,
                        who,
                        f"has {les_now:.0f} of its {les_before:.0f} buckets (le values): "
                        "a quantile from the rest is wrong",
                    )
                )
    for key, who, what in broken[:6]:
        ctx.fail(
            f"{key} still answers",
            f"it {what}; read by {sorted(set(who))[0]}"
            + (
                ". A rule that drops or rewrites a label a query filters on (http_route, "
                "http_response_status_code, le, job) breaks it"
                if "no series" in what
                else ". Drop whole histograms nobody reads, never some buckets of one that is read"
            ),
        )
    if not broken:
        ctx.ok(
            f"every selector of the rules and dashboards that answered before still does "
            f"({len(selectors)} selectors)"
        )

    # 4. No collisions: each sample kept is its own series in the head (a labeldrop that
    # leaves two series with the same labels makes two samples of one series per scrape).
    in_head = _value(ctx, f"count({{{SCRAPED}}})")
    kept = _value(ctx, f"sum(scrape_samples_post_metric_relabeling{{{JOBS}}})")
    moved = [n for n in COLLISIONS if _value(ctx, f"sum({n})") > before_collisions[n]]
    ctx.require(
        in_head >= kept and not moved,
        "no series collide after your rules",
        f"each scrape keeps {kept:.0f} samples but they make only {in_head:.0f} series: after "
        "your rules some series have the same labels, and Prometheus keeps one value of "
        "several (the p95 and the error ratio become wrong without any error). A labeldrop "
        "must only drop a label whose values never tell two series apart",
    )
    down = ctx.query(f"up{{{JOBS}}} == 0")
    ctx.require(
        not down,
        "every service is still scraped (up == 1)",
        f"{', '.join(s.labels.get('job', '?') for s in down)} is down: see Status > Targets "
        "at http://127.0.0.1:9090",
    )
