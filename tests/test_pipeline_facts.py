"""One source for the pipeline's facts: everything that uses them agrees with the declaration.

The stages, the fault steps of each service, the probe routes left out of request rates,
the job regex and the drift thresholds are declared once, in the `pipeline:` section of the
telemetry contract (servescope.telemetry.pipeline). Python reads them from there; the
Prometheus rules, the generated dashboards JSON and the runbooks are text that cannot, so
this test reads them and compares. It also runs the three services in-process and checks
the fault steps they register, the steps they inject, the spans they open and the stages
they time. Every failure names the stale place.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from fastapi.testclient import TestClient
from opentelemetry import trace

from servescope.cli.paths import repo_root
from servescope.telemetry.contract import load_contract
from servescope.telemetry.pipeline import PIPELINE, Pipeline

ROOT = repo_root()
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
RULE_TESTS_DIR = ROOT / "deploy" / "prometheus" / "tests"
DASHBOARDS_DIR = ROOT / "dashboards"
RUNBOOKS_DIR = ROOT / "runbooks"
SERVICES = ("preprocess", "classifier", "postprocess")
TOKEN = "pipeline-facts-test"

# A label matcher in PromQL: label, operator, value.
MATCHER = re.compile(r'\b([a-z_]+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
# A drift score compared with (`> N`) or divided by (`/ N`) a threshold.
DRIFT_COMPARISON = re.compile(
    r"servescope_input_drift_score\{([^}]*)\}\s*\)?\s*(>|/)\s*([0-9]+(?:\.[0-9]+)?)"
)


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# --- checks on PromQL text ---------------------------------------------------------------


def promql_problems(
    text: str, where: str, pipeline: Pipeline = PIPELINE, full_job_sets: bool = True
) -> list[str]:
    """What in one PromQL text (or a page quoting PromQL) disagrees with the pipeline.

    `full_job_sets`: a job or container regex must list exactly the declared services, in
    call order (rules, dashboards, the responder); otherwise any subset will do (runbooks).
    """
    problems = []
    services = set(pipeline.service_names)
    named = {
        "stage": set(pipeline.stage_names),
        "step": set(pipeline.step_names),
        "signal": {s.name for s in pipeline.drift},
    }
    for label, op, value in MATCHER.findall(text):
        if not value or "$" in value or "<" in value:  # any, a variable or a placeholder
            continue
        if label in ("job", "container") and op == "=~":
            alternatives = value.split("|")
            if full_job_sets and value != pipeline.job_regex:
                problems.append(
                    f'{where}: {label}=~"{value}" is not the declared services '
                    f'"{pipeline.job_regex}"'
                )
            elif not set(alternatives) <= services:
                problems.append(
                    f'{where}: {label}=~"{value}" names undeclared services '
                    f"{sorted(set(alternatives) - services)}"
                )
        elif label == "http_route" and op == "!~" and value != pipeline.probe_regex:
            problems.append(
                f'{where}: http_route!~"{value}" is not the declared probe routes '
                f'"{pipeline.probe_regex}"'
            )
        elif label in named:
            values = value.split("|") if op in ("=~", "!~") else [value]
            unknown = [v for v in values if v not in named[label]]
            if unknown:
                problems.append(
                    f'{where}: {label}{op}"{value}": {unknown} not among the declared '
                    f"{label}s {sorted(named[label])}"
                )
    thresholds = pipeline.drift_thresholds
    for selector, _, number in DRIFT_COMPARISON.findall(text):
        for label, op, value in MATCHER.findall(selector):
            if label != "signal":
                continue
            for signal in value.split("|") if op == "=~" else [value]:
                if signal in thresholds and float(number) != thresholds[signal]:
                    problems.append(
                        f"{where}: {signal} compared with {number}, but its declared "
                        f"threshold is {thresholds[signal]:g}"
                    )
    return problems


# --- the Prometheus rules --------------------------------------------------------------


def rule_problems(rules_dir: Path, pipeline: Pipeline = PIPELINE) -> list[str]:
    problems = []
    drift_alerts: dict[str, set[str]] = {}
    for path in sorted(rules_dir.glob("*.yml")):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert") or rule.get("record")
                where = f"{_relative(path)} ({name})"
                expr = str(rule.get("expr", ""))
                problems += promql_problems(expr, where, pipeline)
                if "servescope_input_drift_score" not in expr or "alert" not in rule:
                    continue
                covered = drift_alerts.setdefault(where, set())
                for selector, _, _ in DRIFT_COMPARISON.findall(expr):
                    for label, op, value in MATCHER.findall(selector):
                        if label == "signal":
                            covered.update(value.split("|") if op == "=~" else [value])
                description = str(rule.get("annotations", {}).get("description", ""))
                for threshold in sorted(set(pipeline.drift_thresholds.values())):
                    if not re.search(
                        rf"(?<![0-9.]){re.escape(f'{threshold:g}')}(?![0-9])", description
                    ):
                        problems.append(
                            f"{where}: the description does not state the declared "
                            f"threshold {threshold:g}"
                        )
    if not drift_alerts:
        problems.append(f"{_relative(rules_dir)}: no alert compares the drift scores")
    for where, covered in drift_alerts.items():
        missing = [s.name for s in pipeline.drift if s.name not in covered]
        if missing:
            problems.append(f"{where}: declared drift signals {missing} are not alerted on")
    return problems


def test_the_prometheus_rules_use_the_declared_facts() -> None:
    problems = rule_problems(RULES_DIR)
    assert not problems, "\n".join(problems)


def test_the_rule_unit_tests_use_declared_label_values() -> None:
    problems = []
    for path in sorted(RULE_TESTS_DIR.glob("*.yml")):
        problems += promql_problems(path.read_text(), _relative(path))
    assert not problems, "\n".join(problems)


def test_the_rule_check_notices_a_stale_threshold_and_probe_regex(tmp_path: Path) -> None:
    """The same check on a copy of the rules where a threshold and a regex went stale."""
    for path in RULES_DIR.glob("*.yml"):
        (tmp_path / path.name).write_text(path.read_text())
    assert rule_problems(tmp_path) == []
    model = tmp_path / "model.alerts.yml"
    model.write_text(model.read_text().replace("} > 0.25", "} > 0.3"))
    recording = tmp_path / "recording.rules.yml"
    recording.write_text(recording.read_text().replace("|/admin/.*", ""))
    problems = rule_problems(tmp_path)
    assert any("model.alerts.yml" in p and "0.3" in p for p in problems), problems
    assert any("recording.rules.yml" in p and "probe routes" in p for p in problems), problems


# --- the dashboards JSON -------------------------------------------------------------------


def _panels(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "targets" in node:
            yield node
        for value in node.values():
            yield from _panels(value)
    elif isinstance(node, list):
        for item in node:
            yield from _panels(item)


def dashboard_problems(path: Path, pipeline: Pipeline = PIPELINE) -> list[str]:
    board = json.loads(path.read_text())
    problems = []
    for panel in _panels(board):
        where = f"{_relative(path)} (panel {panel.get('title')!r})"
        exprs = [str(t.get("expr", "")) for t in panel["targets"]]
        for expr in exprs:
            problems += promql_problems(expr, where, pipeline)
        # A drift panel's threshold line sits on its signals' declared threshold.
        if exprs and all("servescope_input_drift_score" in e and "/" not in e for e in exprs):
            signals = {
                signal
                for expr in exprs
                for label, op, value in MATCHER.findall(expr)
                if label == "signal"
                for signal in (value.split("|") if op == "=~" else [value])
            }
            declared = {
                pipeline.drift_thresholds[s] for s in signals if s in pipeline.drift_thresholds
            }
            steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {})
            lines = {s["value"] for s in steps.get("steps", []) if s.get("value") is not None}
            if lines != declared:
                problems.append(
                    f"{where}: threshold line at {sorted(lines)}, declared {sorted(declared)}"
                )
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        problems += promql_problems(
            text, f"{_relative(path)} (variable {variable.get('name')!r})", pipeline
        )
    return list(dict.fromkeys(problems))  # once per panel, not per query


def test_the_dashboards_use_the_declared_facts() -> None:
    boards = sorted(DASHBOARDS_DIR.glob("*.json"))
    assert boards
    problems = [p for board in boards for p in dashboard_problems(board)]
    assert not problems, "\n".join(problems)


# --- the runbooks --------------------------------------------------------------------------


def test_the_runbooks_use_the_declared_facts() -> None:
    problems = []
    for page in sorted(RUNBOOKS_DIR.glob("*.md")):
        text = page.read_text()
        problems += promql_problems(text, _relative(page), full_job_sets=False)
        # "`pixel_psi` over 0.25": a signal and its threshold in prose.
        for signal, number in re.findall(r"`([a-z_]+)` over ([0-9]+(?:\.[0-9]+)?)", text):
            declared = PIPELINE.drift_thresholds.get(signal)
            if declared is not None and float(number) != declared:
                problems.append(f"{_relative(page)}: {signal} over {number}, declared {declared:g}")
    assert not problems, "\n".join(problems)


# --- the telemetry contract ----------------------------------------------------------------


def test_the_contract_takes_its_pipeline_labels_and_step_spans_from_the_pipeline() -> None:
    contract = load_contract()
    assert contract.pipeline == PIPELINE
    assert contract.label_rules["stage"].values == PIPELINE.stage_names
    # `step` may also be empty: a service-wide fault (servescope_fault_value{step=""}).
    assert contract.label_rules["step"].values == (*PIPELINE.step_names, "")
    assert contract.label_rules["signal"].values == tuple(s.name for s in PIPELINE.drift)
    internal = {
        (s.name, s.services)
        for s in contract.spans
        if s.kind == "INTERNAL" and set(s.services) & set(PIPELINE.service_names)
    }
    assert internal == {(s.span, (s.service,)) for s in PIPELINE.steps}
    assert set(PIPELINE.service_names) <= set(contract.routes)


# --- the responder -------------------------------------------------------------------------


def _responder_names() -> dict[str, list[tuple[str, Any]]]:
    """Every module-level name in servescope.responder's modules -> [(module, value)].

    Read wherever the names live, so the test holds however the package is split.
    """
    package = importlib.import_module("servescope.responder")
    found: dict[str, list[tuple[str, Any]]] = {}
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if getattr(value, "__module__", info.name) == info.name or name.isupper():
                found.setdefault(name, []).append((info.name, value))
    return found


def test_the_responder_uses_the_declared_facts() -> None:
    found = _responder_names()
    expected: dict[str, Any] = {
        "SERVICES": PIPELINE.service_names,
        "JOBS": PIPELINE.job_regex,
        "PROBES": PIPELINE.probe_regex,
        "STAGE_SERVICE": dict(PIPELINE.stage_service),
        "STAGE_MEANING": dict(PIPELINE.stage_meaning),
        "STEP_STAGE": dict(PIPELINE.step_stage),
        "DRIFT_THRESHOLDS": dict(PIPELINE.drift_thresholds),
    }
    problems = []
    for name in [*expected, "DEPTH", "PLAYBOOKS", "render_check"]:
        if name not in found:
            problems.append(f"servescope.responder defines no {name} any more: update this test")
    for name, want in expected.items():
        for module, value in found.get(name, []):
            got = dict(value) if isinstance(want, dict) else value
            if isinstance(want, tuple):
                got = tuple(value)
            if got != want:
                problems.append(f"{module}.{name} is {got!r}, declared {want!r}")
    for module, depth in found.get("DEPTH", []):
        order = tuple(sorted(depth, key=lambda s: depth[s]))
        if order != PIPELINE.deepest_first:
            problems.append(f"{module}.DEPTH orders {order}, declared {PIPELINE.deepest_first}")
    # Its diagnostic queries filter jobs and probes like the rules, and read declared values.
    for _, render in found.get("render_check", [])[:1]:
        for module, playbooks in found.get("PLAYBOOKS", []):
            for category, checks in playbooks.items():
                for check in checks:
                    where = f"{module} ({category} check {check.key})"
                    problems += promql_problems(render(check, "5m", "servescope"), where)
    assert not problems, "\n".join(problems)


# --- the services, running in-process ------------------------------------------------------


def _wait(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def observed() -> Iterator[dict[str, Any]]:
    """One prediction through the three apps in-process, recording steps, spans, stages.

    Preprocess's calls to its downstreams go to the other two apps' TestClients instead
    of the network; the tracing helper and the fault injector are wrapped to record the
    span names each service opens and the steps it injects.
    """
    from servescope.classifier import app as classifier_app
    from servescope.classifier.settings import Settings as ClassifierSettings
    from servescope.postprocess import app as postprocess_app
    from servescope.postprocess.settings import Settings as PostprocessSettings
    from servescope.preprocess import downstream
    from servescope.preprocess import pipeline as preprocess_pipeline
    from servescope.preprocess.app import create_app as create_preprocess
    from servescope.preprocess.settings import Settings as PreprocessSettings
    from servescope.runtime.errors import ServiceError
    from servescope.runtime.faults import Faults
    from servescope.runtime.health import Health

    spans: dict[str, list[str]] = {s: [] for s in SERVICES}
    injected: dict[str, list[str]] = {s: [] for s in SERVICES}
    span_modules = {
        "preprocess": preprocess_pipeline,
        "classifier": classifier_app,
        "postprocess": postprocess_app,
    }
    original_inject = Faults.inject

    def recording_span(service: str) -> Any:
        def step_span(name: str, *args: Any, **kwargs: Any) -> Any:
            spans[service].append(name)
            return nullcontext(trace.INVALID_SPAN)

        return step_span

    with ExitStack() as stack, pytest.MonkeyPatch.context() as patch:
        for service, module in span_modules.items():
            patch.setattr(module, "step_span", recording_span(service))
        clients: dict[str, TestClient] = {}

        async def inject(self: Faults, step: str) -> None:
            owner = next(s for s, f in faults_of.items() if f is self)
            injected[owner].append(step)
            await original_inject(self, step)

        faults_of: dict[str, Faults] = {}
        original_init = Faults.__init__

        def init(self: Faults, steps: tuple[str, ...], metrics: Any = None, **kw: Any) -> None:
            original_init(self, steps, metrics, **kw)
            faults_of[metrics.service if metrics else "?"] = self

        patch.setattr(Faults, "__init__", init)
        patch.setattr(Faults, "inject", inject)

        async def call(
            session: Any,
            endpoint: downstream.Endpoint,
            method: str,
            path: str,
            payload: Any = None,
            record: Any = None,
            not_found: ServiceError | None = None,
        ) -> Any:
            client = clients[endpoint.stage]
            body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY) if payload else None
            response = await asyncio.to_thread(
                client.request,
                method,
                path,
                content=body,
                headers={"Content-Type": "application/json"},
            )
            if record is not None:
                record("ok", 0.0)
            if response.status_code == 404 and not_found is not None:
                raise not_found
            if response.status_code != 200:
                raise ServiceError(502, f"{endpoint.stage}_error", response.text, endpoint.stage)
            return response.json()

        patch.setattr(downstream, "call", call)
        clients["classifier"] = stack.enter_context(
            TestClient(
                classifier_app.create_app(
                    ClassifierSettings(admin_token=TOKEN), Health("classifier", "test")
                )
            )
        )
        clients["postprocess"] = stack.enter_context(
            TestClient(
                postprocess_app.create_app(
                    PostprocessSettings(admin_token=TOKEN), Health("postprocess", "test")
                )
            )
        )
        clients["preprocess"] = stack.enter_context(
            TestClient(
                create_preprocess(
                    PreprocessSettings(admin_token=TOKEN), Health("preprocess", "test")
                )
            )
        )
        for service in SERVICES:
            _wait(lambda s=service: clients[s].get("/readyz").status_code == 200, service)
        png = (ROOT / "services/classifier/model/heldout/0000_7.png").read_bytes()
        answer = clients["preprocess"].post(
            "/v1/predict", content=png, headers={"Content-Type": "image/png"}
        )
        assert answer.status_code == 200, answer.text
        yield {"clients": clients, "spans": spans, "injected": injected}


def _series_labels(exposition: str, metric: str, label: str) -> list[str]:
    return re.findall(rf'^{metric}\{{[^}}]*\b{label}="([^"]*)"', exposition, re.MULTILINE)


def test_each_service_registers_injects_and_traces_its_declared_steps(observed) -> None:
    problems = []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for service in SERVICES:
        client = observed["clients"][service]
        declared = list(PIPELINE.fault_steps(service))
        registered = client.get("/admin/faults", headers=auth).json()["steps"]
        if registered != declared:
            problems.append(f"{service} registers fault steps {registered}, declared {declared}")
        gauges = re.findall(
            r'^servescope_fault_value\{kind="delay",service="[a-z]+",step="([^"]*)"',
            client.get("/metrics").text,
            re.MULTILINE,
        )
        if gauges != declared:
            problems.append(
                f"{service} exposes servescope_fault_value for {gauges}, declared {declared}"
            )
        if observed["injected"][service] != declared:
            problems.append(
                f"{service} injects faults in {observed['injected'][service]} per prediction, "
                f"declared {declared}"
            )
        spans = [s.span for s in PIPELINE.steps_of(service)]
        if observed["spans"][service] != spans:
            problems.append(
                f"{service} opens step spans {observed['spans'][service]}, declared {spans}"
            )
    assert not problems, "\n".join(problems)


def test_preprocess_times_the_declared_stages(observed) -> None:
    from servescope.preprocess.pipeline import STAGES

    assert PIPELINE.stage_names == STAGES
    exposition = observed["clients"]["preprocess"].get("/metrics").text
    timed = _series_labels(exposition, "servescope_stage_duration_seconds_count", "stage")
    assert timed == list(PIPELINE.stage_names), (
        f"servescope.preprocess.pipeline times stages {timed}, declared {PIPELINE.stage_names}"
    )


def test_the_classifier_scores_the_declared_drift_signals(observed) -> None:
    from servescope.classifier.drift import THRESHOLDS

    assert dict(THRESHOLDS) == dict(PIPELINE.drift_thresholds)
    exposition = observed["clients"]["classifier"].get("/metrics").text
    signals = _series_labels(exposition, "servescope_input_drift_score", "signal")
    assert signals == [s.name for s in PIPELINE.drift]
