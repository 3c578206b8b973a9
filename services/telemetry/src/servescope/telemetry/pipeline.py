"""The pipeline's facts (the `pipeline:` section of contract.yaml), loaded and typed.

Declared once, read everywhere: the services in call order, the stages of a prediction
with the service doing each and its fault-injection steps, the probe routes left out of
request rates, and the drift signals with their thresholds. The services take their fault
steps and span names from here, the classifier its drift thresholds, the dashboards and
the responder their stage names, regexes and thresholds, the contract its `stage`, `step`
and `signal` label values and its step spans, and docs/telemetry.md its Pipeline table.

Code that implements particular stages, steps or signals names them once through
`expect_stages`, `expect_steps` or `expect_drift_signals`, which fail at import, naming the
module, when the code and the declaration disagree.

    from servescope.telemetry.pipeline import PIPELINE

    PIPELINE.stage_names            # ('decode', 'preprocess', 'infer', 'postprocess', 'end_to_end')
    PIPELINE.fault_steps("classifier")   # ('infer',)
    PIPELINE.probe_regex            # '/metrics|/healthz|...'
    PIPELINE.drift_thresholds       # {'pixel_psi': 0.25, ...}
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

SOURCE = "services/telemetry/src/servescope/telemetry/contract.yaml (section pipeline)"


class PipelineError(ValueError):
    """The declaration is inconsistent, or code disagrees with it."""


@dataclass(frozen=True)
class Service:
    name: str
    meaning: str
    calls: tuple[str, ...] = ()  # the services it calls, in the order it calls them
    depth: int = 0  # calls between the client and this service (the edge is 0)


@dataclass(frozen=True)
class Step:
    """A fault-injection step: label `step`, and an INTERNAL span of the same name."""

    name: str
    stage: str
    service: str
    meaning: str

    @property
    def span(self) -> str:
        return self.name


@dataclass(frozen=True)
class Stage:
    """A stage of a prediction, timed at the edge (label `stage`)."""

    name: str
    service: str
    meaning: str
    steps: tuple[Step, ...] = ()
    total: bool = False  # the whole prediction, not a part of it


@dataclass(frozen=True)
class DriftSignal:
    name: str
    threshold: float
    meaning: str


@dataclass(frozen=True)
class Pipeline:
    services: tuple[Service, ...]  # in call order: the edge, then whom it calls, in order
    stages: tuple[Stage, ...]
    probe_routes: tuple[str, ...]  # regular expressions over http_route
    drift: tuple[DriftSignal, ...]

    # --- services ------------------------------------------------------------------------
    @property
    def service_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.services)

    @property
    def job_regex(self) -> str:
        """The services' Prometheus jobs (and container names): `preprocess|classifier|...`."""
        return "|".join(self.service_names)

    @property
    def deepest_first(self) -> tuple[str, ...]:
        """Deepest callee first (call order breaks ties): a failure there explains the rest."""
        order = {name: i for i, name in enumerate(self.service_names)}
        return tuple(s.name for s in sorted(self.services, key=lambda s: (-s.depth, order[s.name])))

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(f"service {name!r} is not declared in {SOURCE}")

    # --- stages and steps ----------------------------------------------------------------
    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    @property
    def parts(self) -> tuple[Stage, ...]:
        """The stages that are parts of a prediction (all but the total)."""
        return tuple(s for s in self.stages if not s.total)

    @property
    def total(self) -> Stage:
        return next(s for s in self.stages if s.total)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"stage {name!r} is not declared in {SOURCE}")

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(step for stage in self.stages for step in stage.steps)

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"step {name!r} is not declared in {SOURCE}")

    def steps_of(self, service: str) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.service == service)

    def fault_steps(self, service: str) -> tuple[str, ...]:
        """The fault-injection steps of one service, in pipeline order."""
        return tuple(s.name for s in self.steps_of(service))

    @property
    def step_stage(self) -> Mapping[str, str]:
        """Step -> the stage it slows."""
        return MappingProxyType({s.name: s.stage for s in self.steps})

    @property
    def stage_service(self) -> Mapping[str, str]:
        """Part stage -> the service doing its work (the total stage has none)."""
        return MappingProxyType({s.name: s.service for s in self.parts})

    @property
    def stage_meaning(self) -> Mapping[str, str]:
        return MappingProxyType({s.name: s.meaning for s in self.stages})

    # --- probes and drift ----------------------------------------------------------------
    @property
    def probe_regex(self) -> str:
        """For `http_route!~"..."`: the routes that are not traffic."""
        return "|".join(self.probe_routes)

    def is_probe(self, route: str) -> bool:
        return re.fullmatch(self.probe_regex, route) is not None

    @property
    def drift_thresholds(self) -> Mapping[str, float]:
        return MappingProxyType({s.name: s.threshold for s in self.drift})

    # --- code against the declaration ----------------------------------------------------
    def expect_stages(self, *names: str, where: str) -> tuple[Stage, ...]:
        """The stages `where` times: exactly the declared ones, in order."""
        _agree(where, "times stages", names, self.stage_names)
        return self.stages

    def expect_steps(self, service: str, *names: str, where: str) -> tuple[Step, ...]:
        """The fault steps `where` runs for `service`: exactly the declared ones, in order."""
        _agree(where, f"runs {service} steps", names, self.fault_steps(service))
        return self.steps_of(service)

    def expect_drift_signals(self, *names: str, where: str) -> tuple[DriftSignal, ...]:
        """The drift signals `where` computes: exactly the declared ones, in order."""
        _agree(where, "computes drift signals", names, tuple(s.name for s in self.drift))
        return self.drift


def _agree(where: str, what: str, used: tuple[str, ...], declared: tuple[str, ...]) -> None:
    if used != declared:
        raise PipelineError(
            f"{where} {what} {', '.join(used) or '(none)'}, but {SOURCE} declares "
            f"{', '.join(declared) or '(none)'}: make them agree"
        )


def _text(value: Any) -> str:
    return " ".join(str(value).split())


def parse(raw: Mapping[str, Any]) -> Pipeline:
    """The pipeline section of the contract, checked for consistency."""
    problems: list[str] = []
    services = [
        Service(
            name=str(item["name"]),
            meaning=_text(item.get("meaning", "")),
            calls=tuple(str(c) for c in item.get("calls", [])),
        )
        for item in raw["services"]
    ]
    names = [s.name for s in services]
    if not names:
        raise PipelineError(f"{SOURCE}: no services declared")
    depth = {names[0]: 0}
    for service in services:  # declared in call order, so callers come before callees
        for callee in service.calls:
            if callee not in names:
                problems.append(f"service {service.name} calls undeclared {callee!r}")
            elif service.name in depth:
                depth.setdefault(callee, depth[service.name] + 1)
    unreached = [n for n in names if n not in depth]
    if unreached:
        problems.append(f"services {unreached} are not called by the edge {names[0]!r}")
    reach = list(dict.fromkeys([names[0], *(c for s in services for c in s.calls)]))
    if [n for n in reach if n in names] != names:
        problems.append(f"services {names} are not in call order {reach}")
    services = [Service(s.name, s.meaning, s.calls, depth.get(s.name, 0)) for s in services]

    stages = []
    for item in raw["stages"]:
        stage_name, owner = str(item["name"]), str(item["service"])
        if owner not in names:
            problems.append(f"stage {stage_name}: undeclared service {owner!r}")
        steps = tuple(
            Step(str(step["name"]), stage_name, owner, _text(step.get("meaning", "")))
            for step in item.get("steps", [])
        )
        stages.append(
            Stage(
                name=stage_name,
                service=owner,
                meaning=_text(item.get("meaning", "")),
                steps=steps,
                total=bool(item.get("total", False)),
            )
        )
    for kind, values in (
        ("stages", [s.name for s in stages]),
        ("steps", [step.name for s in stages for step in s.steps]),
        ("services", names),
    ):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            problems.append(f"{kind} declared twice: {twice}")
    totals = [s.name for s in stages if s.total]
    if len(totals) != 1:
        problems.append(f"exactly one stage is the total (total: true), not {totals}")
    for stage in stages:
        if stage.total and stage.steps:
            problems.append(f"the total stage {stage.name} has no steps of its own")

    probes = tuple(str(p) for p in raw["probe_routes"])
    for probe in probes:
        try:
            re.compile(probe)
        except re.error as exc:
            problems.append(f"probe route {probe!r} is no regular expression: {exc}")
    drift = tuple(
        DriftSignal(str(item["name"]), float(item["threshold"]), _text(item.get("meaning", "")))
        for item in raw["drift"]
    )
    if problems:
        raise PipelineError(f"{SOURCE}: " + "; ".join(problems))
    return Pipeline(tuple(services), tuple(stages), probes, drift)


@functools.cache
def load_pipeline() -> Pipeline:
    text = resources.files("servescope.telemetry").joinpath("contract.yaml").read_text()
    return parse(yaml.safe_load(text)["pipeline"])


PIPELINE = load_pipeline()
