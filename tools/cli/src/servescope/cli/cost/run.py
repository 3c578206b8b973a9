"""`servescope cost`: the local stack with N models under one traffic mix, measured twice.

Once with everything kept (every trace, every log line, no relabeling) and once with the cost
profile (Prometheus's relabel and drop rules from deploy/prometheus/cost-profile.yml, the
services' own trace and INFO log ratios from their settings, the Fluent Bit sampling filter
run in LuaJIT over the log lines the services wrote). The same measuring at smaller fleets
feeds the projection; the cut run also carries the debuggability proof (proof.py).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

from servescope.cli.cost import prices as pricing
from servescope.cli.cost import project, proof
from servescope.cli.cost.observe import (
    KEPT_ALWAYS,
    LEVELS,
    LogWindow,
    PrometheusAPI,
    SpanCounter,
    count_lines,
    metrics_snapshot,
)
from servescope.cli.local.cgroups import Limits
from servescope.cli.local.process import free_port
from servescope.cli.local.services import SERVICES
from servescope.cli.local.session import LocalSession, ensure_model_repository
from servescope.cli.paths import repo_root
from servescope.cli.relabel import REMOTE_WRITE_VALUES
from servescope.telemetry.settings import TelemetrySettings

PROFILES = ("kept", "cut")
PROFILE_TITLES = {"kept": "everything kept", "cut": "cost profile"}
# The cost profile's sampling is the services' shipped default (their settings), not a
# number written here; everything kept is 1.0 for both.
_DEFAULTS = TelemetrySettings.model_fields
TRACE_RATIO = float(_DEFAULTS["trace_sample_ratio"].default)
LOG_INFO_RATIO = float(_DEFAULTS["log_info_sample_ratio"].default)
SAMPLING_LUA = Path("deploy") / "fluent-bit" / "sampling.lua"
STACK_VALUES = Path("deploy") / "stack" / "kube-prometheus-stack.yaml"
PRICES = Path("deploy") / "cost" / "prices.yaml"
CONTAINER_LIMITS = Limits(memory_bytes=2 << 30, cpu_millicores=2000)

# Runs the Fluent Bit filter over records handed in on stdin, one per line as url-encoded
# key=value pairs joined by '&'; prints 1 (kept) or 0 (dropped) per record.
LUA_DRIVER = """
local script = arg[1]
dofile(script)
local function decode(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
local out = {}
for line in io.lines() do
  local record = {}
  for pair in line:gmatch("[^&]+") do
    local key, value = pair:match("^([^=]*)=(.*)$")
    if key then record[decode(key)] = decode(value) end
  end
  local code = sample("servescope", 0, record)
  out[#out + 1] = code == -1 and "0" or "1"
end
io.write(table.concat(out, "\\n"), "\\n")
"""


@dataclass
class Plan:
    """What to run: fleet sizes, seconds, traffic; the progress printer."""

    models: int = 50
    seconds: float = 60.0
    rate: float = 20.0  # requests per second at `models`; smaller fleets get their share
    sizes: tuple[int, ...] = (10, 25)  # extra fleet sizes measured for the projection
    size_seconds: float = 30.0
    warmup: float = 15.0
    drill_seconds: float = 20.0
    run_dir: Path = field(default_factory=lambda: Path(".run") / "cost")
    prove: bool = True  # evaluate every rule and dashboard query, run the drill
    # Every measurement at once (each its own stack): quicker, but the runs share the CPU;
    # the report's figures come from sequential runs.
    parallel: bool = False
    say: Callable[[str], None] = print
    started: float = field(default_factory=time.monotonic)
    budget: float = 0.0  # seconds the whole run is expected to take

    STARTUP = 25.0  # a stack with fifty models, Prometheus and its first scrapes
    BUILD = 10.0  # `servescope models build` of one repository, on two cores

    def repository(self, models: int) -> Path:
        return self.run_dir / f"models-{models}"

    def measurements(self) -> list[tuple[int, str, float]]:
        """(models, profile, seconds) of every measurement, the main pair last."""
        extra = sorted({n for n in self.sizes if 0 < n < self.models})
        found = [(n, p, self.size_seconds) for n in extra for p in PROFILES]
        return found + [(self.models, p, self.seconds) for p in PROFILES]

    def estimate(self) -> float:
        each = [self.STARTUP + self.warmup + s for _, _, s in self.measurements()]
        total = max(each) if self.parallel else sum(each)
        sizes = {n for n, _, _ in self.measurements() if n > 1}
        total += self.BUILD * sum(
            not (self.repository(n) / "repository.json").exists() for n in sizes
        )
        # The proof's queries and the drill's responder.
        return total + (self.drill_seconds + 20 if self.prove else 0)

    def left(self) -> float:
        return max(0.0, self.budget - (time.monotonic() - self.started))

    def phase(self, text: str) -> None:
        self.say(
            f"[{time.monotonic() - self.started:5.0f} s] {text}  (about {self.left():.0f} s left)"
        )


def lua_keeps(lines: list[bytes], script: Path, ratio: float) -> list[bool]:
    """The Fluent Bit filter's decision for each line, from the real script in LuaJIT."""
    records = []
    for line in lines:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = {"log": line.decode(errors="replace").rstrip("\n")}
        pairs = {k: v for k, v in record.items() if isinstance(v, str | int | float | bool)}
        records.append(
            "&".join(
                f"{urllib.parse.quote_plus(str(k))}={urllib.parse.quote_plus(str(v))}"
                for k, v in pairs.items()
            )
        )
    with tempfile.TemporaryDirectory() as tmp:
        driver = Path(tmp) / "driver.lua"
        driver.write_text(LUA_DRIVER)
        out = subprocess.run(
            ["luajit", str(driver), str(script)],
            input="\n".join(records) + "\n",
            capture_output=True,
            text=True,
            check=True,
            env={"SERVESCOPE_LOG_INFO_SAMPLE_RATIO": f"{ratio:g}", "PATH": "/usr/bin:/bin"},
        )
    decisions = out.stdout.split()
    if len(decisions) != len(lines):
        raise RuntimeError(f"the Lua filter answered {len(decisions)} of {len(lines)} lines")
    return [d == "1" for d in decisions]


def session_for(
    plan: Plan, run_dir: Path, profile: str, models: int, spans: SpanCounter
) -> LocalSession:
    ratios = (TRACE_RATIO, LOG_INFO_RATIO) if profile == "cut" else (1.0, 1.0)
    env = {
        **spans.env(),
        "SERVESCOPE_TRACE_SAMPLE_RATIO": f"{ratios[0]:g}",
        "SERVESCOPE_LOG_INFO_SAMPLE_RATIO": f"{ratios[1]:g}",
    }
    options: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(LocalSession)}
    if models > 1:  # the bundled model is the first of every repository
        options["model_repository"] = plan.repository(models)
    if "cost_profile" in names:
        options["cost_profile"] = profile == "cut"
    elif profile == "cut":
        raise RuntimeError("local mode has no cost profile yet (LocalSession.cost_profile)")
    return LocalSession(
        run_dir=run_dir,
        ports={name: free_port() for name in SERVICES},
        prometheus_port=free_port(),
        alertmanager_port=None,  # the drill posts the alert to its own responder
        responder_port=free_port(),
        rate=plan.rate * models / plan.models,
        exporter_port=free_port(),
        grafana_port=None,
        jaeger=False,
        extra_env={name: dict(env) for name in SERVICES},
        # Limits as a cluster sets them, so the container series Kubernetes has (limits,
        # CFS periods) exist for the rules and the pods dashboard; generous: nothing here
        # comes near them.
        limits={name: CONTAINER_LIMITS for name in SERVICES},
        say=lambda _: None,
        **options,
    )


def measure(plan: Plan, models: int, profile: str, seconds: float, main: bool) -> dict[str, Any]:
    """One run: start, warm up, measure `seconds`, and (main runs) prove; then stop."""
    run_dir = plan.run_dir / f"{models}-{profile}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    title = f"{models} models, {PROFILE_TITLES[profile]}"
    with SpanCounter() as spans:
        session = session_for(plan, run_dir, profile, models, spans)
        plan.phase(f"{title}: starting the stack")
        session.start(timeout=120)
        try:
            if session.prometheus is None:
                raise RuntimeError("Prometheus did not start: " + "; ".join(session.notes))
            session.prometheus.wait_for_targets(timeout=60)
            plan.phase(f"{title}: warming up {plan.warmup:g} s")
            time.sleep(plan.warmup)
            logs = LogWindow([run_dir / f"{name}.log" for name in SERVICES])
            logs.start()
            spans_before, span_bytes_before = spans.snapshot()
            began = time.monotonic()
            plan.phase(f"{title}: measuring {seconds:g} s")
            while (elapsed := time.monotonic() - began) < seconds:
                time.sleep(min(10.0, seconds - elapsed))
                if seconds - (time.monotonic() - began) > 1:
                    plan.phase(
                        f"{title}: measuring, {seconds - (time.monotonic() - began):.0f} s of it left"
                    )
            window = time.monotonic() - began
            span_counts, span_bytes = spans.snapshot()
            api = PrometheusAPI(session.prometheus.url)
            scrape = _seconds(session.prometheus.config["global"]["scrape_interval"])
            figures = metrics_snapshot(api, window, scrape, write_rules(profile))
            figures.update(_logs(api, logs.lines(), profile, window))
            span_total = sum(span_counts.values()) - sum(spans_before.values())
            figures.update(
                {
                    "models": models,
                    "profile": profile,
                    "seconds": window,
                    "requests_per_second": api.value(
                        "sum(rate(http_server_request_duration_seconds_count"
                        f'{{job="preprocess", http_route=~"/v1/.*predict"}}[{max(round(window), 4 * round(scrape))}s]))'
                    ),
                    "spans_by_service": {
                        k: v - spans_before.get(k, 0) for k, v in sorted(span_counts.items())
                    },
                    "spans_per_second": span_total / window,
                    "span_bytes_per_second": (span_bytes - span_bytes_before) / window,
                }
            )
            if main and plan.prove:
                plan.phase(f"{title}: evaluating every rule and dashboard query")
                figures["expressions"] = proof.check_all(api, repo_root())
                if profile == "cut":
                    plan.phase(f"{title}: the slow-step drill ({plan.drill_seconds:g} s)")
                    figures["drill"] = proof.drill(
                        api,
                        repo_root(),
                        run_dir,
                        session.ports,
                        session.token_file,
                        plan.drill_seconds,
                        plan.say,
                    )
        finally:
            session.stop()
    return figures


def write_rules(profile: str) -> list[dict[str, Any]]:
    """The remote write's relabeling under a profile: none with everything kept; the
    template's remote-write values (deploy/stack) under the cost profile, in Prometheus's
    own spelling (the operator's camelCase keys turned to snake_case)."""
    if profile == "kept":
        return []
    values = yaml.safe_load((repo_root() / REMOTE_WRITE_VALUES).read_text())
    (target,) = values["prometheus"]["prometheusSpec"]["remoteWrite"]
    return [
        {re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower(): value for key, value in rule.items()}
        for rule in target.get("writeRelabelConfigs", [])
    ]


def _seconds(text: str) -> float:
    return float(text[:-1]) * {"s": 1, "m": 60}[text[-1]]


def _logs(api: PrometheusAPI, lines: list[bytes], profile: str, window: float) -> dict[str, Any]:
    """Written lines by level, the lines the Fluent Bit filter ships (cost profile), and the
    services' own count of what their source sampling dropped."""
    written = count_lines(lines)
    shipped = written
    if profile == "cut":
        script = repo_root() / SAMPLING_LUA
        if not script.exists():
            raise RuntimeError(f"{SAMPLING_LUA} is missing: the cost profile's log filter")
        keeps = lua_keeps(lines, script, LOG_INFO_RATIO)
        shipped = count_lines([line for line, keep in zip(lines, keeps, strict=True) if keep])
    source = {
        f"{r['metric'].get('level')}/{r['metric'].get('decision')}": float(r["value"][1])
        for r in api.query(
            # The whole run, warm-up included: every line any service decided on.
            f'sum by (level, decision) (servescope_log_lines_total{{job=~"{"|".join(SERVICES)}"}})'
        )
    }
    lost_source = sum(
        v for k, v in source.items() if k.split("/")[0] in KEPT_ALWAYS and k.endswith("/dropped")
    )
    lost_filter = sum(written[lv]["lines"] - shipped[lv]["lines"] for lv in KEPT_ALWAYS)
    return {
        "logs_written": written,
        "logs_shipped": shipped,
        "logs_source_decisions": source,
        "warning_error_lines_lost": {"at_source": lost_source, "in_filter": lost_filter},
        "log_lines_per_second": sum(v["lines"] for v in shipped.values()) / window,
        "log_bytes_per_second": sum(v["bytes"] for v in shipped.values()) / window,
        "log_levels": list(LEVELS),
    }


def volumes(figures: dict[str, Any]) -> pricing.Volumes:
    return pricing.Volumes(
        series=figures["billed_series"],
        samples_per_second=figures["billed_samples_per_second"],
        measured_scrape_interval_seconds=figures["scrape_interval_seconds"],
        log_bytes_per_second=figures["log_bytes_per_second"],
        span_bytes_per_second=figures["span_bytes_per_second"],
    )


def run(plan: Plan) -> dict[str, Any]:
    """Every measurement, the costs, the projection and the proof, as one JSON-able report."""
    root = repo_root()
    prices = pricing.load(root / PRICES)
    stack = project.StackFacts.load(root / STACK_VALUES)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    plan.started = time.monotonic()
    plan.budget = plan.estimate()
    measurements = plan.measurements()
    plan.phase(
        f"{len(measurements)} runs: {', '.join(f'{n} models {PROFILE_TITLES[p]}' for n, p, _ in measurements)}"
    )
    for models in sorted({m for m, _, _ in measurements if m > 1}):
        plan.phase(f"{models} models: the model repository (servescope models build)")
        ensure_model_repository(models, plan.repository(models), say=lambda _: None)

    def one(measurement: tuple[int, str, float]) -> dict[str, Any]:
        models, profile, seconds = measurement
        return measure(plan, models, profile, seconds, main=models == plan.models)

    if plan.parallel:
        with ThreadPoolExecutor(len(measurements)) as pool:
            points = list(pool.map(one, measurements))
    else:
        points = [one(m) for m in measurements]
    plan.phase("projecting and writing the report")
    settings = {
        "models": plan.models,
        "seconds": plan.seconds,
        "rate": plan.rate,
        "sizes": sorted({m for m, _, _ in measurements}),
        "size_seconds": plan.size_seconds,
        "trace_ratio": TRACE_RATIO,
        "log_info_ratio": LOG_INFO_RATIO,
    }
    main_runs = {p["profile"]: p for p in points if p["models"] == plan.models}
    report = {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "plan": settings,
        "runs": main_runs,
        "proof": proof_summary(main_runs),
    }
    return price(report, points, prices, stack)


def price(
    report: dict[str, Any],
    points: list[dict[str, Any]],
    prices: pricing.Prices,
    stack: project.StackFacts,
) -> dict[str, Any]:
    """The report with its bills and projection (re)computed at these prices."""
    runs = report["runs"]
    costs = {
        profile: pricing.monthly(volumes(runs[profile]), prices, stack.scrape_interval_seconds)
        for profile in PROFILES
    }
    costs["share_cut"] = {
        name: pricing.cut(costs["kept"][name], costs["cut"][name]) for name in costs["kept"]
    }
    return {
        **report,
        "prices": dataclasses.asdict(prices),
        "stack": dataclasses.asdict(stack),
        "costs": costs,
        "projection": projection(points, prices, stack),
    }


def reprice(report: dict[str, Any]) -> dict[str, Any]:
    """A saved report at the price table and stack values in the checkout now: edit
    deploy/cost/prices.yaml, then `servescope cost --reprice` (no new measurement)."""
    root = repo_root()
    return price(
        report,
        report["projection"]["points"],
        pricing.load(root / PRICES),
        project.StackFacts.load(root / STACK_VALUES),
    )


def projection(
    points: list[dict[str, Any]], prices: pricing.Prices, stack: project.StackFacts
) -> dict[str, Any]:
    fits = {
        profile: project.fit_all(
            [{"models": p["models"], "figures": p} for p in points if p["profile"] == profile]
        )
        for profile in PROFILES
    }
    largest = max(points, key=lambda p: (p["models"], p["profile"] == "kept"))
    rows = []
    for models in project.TARGETS:
        row: dict[str, Any] = {"models": models}
        for profile in PROFILES:
            values = {name: line.at(models) for name, line in fits[profile].items()}
            volume = pricing.Volumes(
                series=values["billed_series"],
                samples_per_second=values["billed_samples_per_second"],
                measured_scrape_interval_seconds=largest["scrape_interval_seconds"],
                log_bytes_per_second=values["log_bytes_per_second"],
                span_bytes_per_second=values["span_bytes_per_second"],
            )
            row[profile] = {
                **values,
                "cost": pricing.monthly(volume, prices, stack.scrape_interval_seconds),
            }
        rows.append(row)
    memory = project.memory_per_series(
        [(p["head_series"], p["prometheus_rss_bytes"]) for p in points]
    )
    capacity = {
        profile: project.models_at_capacity(
            fits[profile]["head_series"], memory, stack.prometheus_memory_limit_bytes
        )
        for profile in PROFILES
    }
    return {
        "points": [
            {
                "models": p["models"],
                "profile": p["profile"],
                "prometheus_rss_bytes": p["prometheus_rss_bytes"],
                "scrape_interval_seconds": p["scrape_interval_seconds"],
                **{q: p[q] for q in project.QUANTITIES},
            }
            for p in points
        ],
        "fits": {
            profile: {name: dataclasses.asdict(line) for name, line in fit.items()}
            for profile, fit in fits.items()
        },
        "rows": rows,
        "prometheus_memory": dataclasses.asdict(memory),
        "models_at_memory_limit": capacity,
    }


def proof_summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    kept, cut = runs["kept"], runs["cut"]
    rules = proof.compare(kept.get("expressions", {}), cut.get("expressions", {}))
    lost = cut["warning_error_lines_lost"]
    return {
        "expressions": rules,
        "warning_error_lines_lost": lost["at_source"] + lost["in_filter"],
        "warning_error_lines_kept": sum(cut["logs_shipped"][lv]["lines"] for lv in KEPT_ALWAYS),
        "drill": cut.get("drill", {}),
    }
