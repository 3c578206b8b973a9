"""A lab as declared on disk: `labs/<stage>/<nn>-<name>/` with its lab.yaml, read and checked.

    labs/<stage>/<nn>-<name>/
      README.md   the guide        lab.yaml    the declaration (below)
      starter/    copied into work/ by `lab start` (optional)
      solution/   copied over work/ by `lab solve`; answer.txt (the answer solve submits);
                  solve.py with `def solve(ctx) -> None` for solutions that act
      check.py    `def check(ctx) -> None`, reporting through ctx.require / ctx.fail
      setup.py    optional `def setup(ctx) -> None`, run by `lab start` once the stack is up
                  (e.g. to pick a random fault and remember it in ctx.state)

lab.yaml keys: id, stage, title, minutes, prerequisites, needs ([services, prometheus,
alertmanager], any subset; Prometheus scrapes the services, so it brings them up too), env
({service or "*": {VAR: value}}; "{lab}" and "{root}" in a value become the lab's folder and
the repository), faults
(["service:step:seconds"]), hints (weakest first), answer ({prompt: ...}, for labs graded by
`servescope lab answer`). Optional keys this runner also reads: env_files ({service: file in
work/}, KEY=VALUE lines layered over env when the stack starts), allow_unready (services
whose broken state is being unready: start waits for their liveness only), traffic ({rate,
mix, probes, warmup, pulses: [{service, step, delay, every, for}]}), repo_files (repository
paths or globs the lab edits: backed up by start, restored exactly by reset), tools
(binaries the checker needs, e.g. promtool, luajit), limits ({service: "memory:256Mi,cpu:500m"},
resource limits as `servescope up --limit` sets them: each service in a memory and CPU cgroup,
with cAdvisor and kube-state-metrics series for the lab's Prometheus, jobs `kubelet` and
`kube-state-metrics`) and limits_file (a SERVICE=memory:...,cpu:... file in work/ layered over
limits at start and restart, for labs where the learner fixes a limit).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STAGES = ("beginner", "intermediate", "advanced", "drills")
NEEDS = ("services", "prometheus", "alertmanager")
SERVICE_NAMES = ("preprocess", "classifier", "postprocess")
LABS_DIR = "labs"
WORK_DIR = "work"
_DIR_NAME = re.compile(r"^(\d{2})-([a-z0-9]+(?:-[a-z0-9]+)*)$")


class LabError(RuntimeError):
    """Something stops a lab command; the message says what to do."""


class LabFormatError(LabError):
    """A lab folder that does not follow the format; the message names the file and key."""


@dataclass(frozen=True)
class Pulse:
    """A recurring fault: `delay` seconds on `step` of `service` for `for_seconds` every
    `every` seconds ("*" is the service's first fault step, read from its admin API)."""

    service: str
    step: str
    delay: float
    every: float
    for_seconds: float


@dataclass(frozen=True)
class Traffic:
    """Background traffic `lab start` sends to the edge while the lab runs."""

    rate: float = 5.0
    mix: str = "mixed"
    probes: bool = False  # a kubelet's /healthz and /readyz probes, every second, per service
    warmup: float = 0.0  # seconds start waits after the first data reaches Prometheus
    pulses: tuple[Pulse, ...] = ()


@dataclass(frozen=True)
class Lab:
    """One lab. Attribute access for the typed fields; `lab["key"]` and `lab.get("key")`
    read the raw lab.yaml, so checkers may use either."""

    id: str
    stage: str
    number: str
    name: str
    title: str
    minutes: int
    path: Path
    raw: dict[str, Any] = field(repr=False)
    prerequisites: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset()
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    faults: tuple[str, ...] = ()
    hints: tuple[str, ...] = ()
    answer_prompt: str | None = None
    env_files: dict[str, str] = field(default_factory=dict)
    allow_unready: tuple[str, ...] = ()
    traffic: Traffic | None = None
    repo_files: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    timed: bool = False  # a drill: the time from `start` to the first pass is recorded
    limits: dict[str, str] = field(default_factory=dict)  # service -> "memory:Q,cpu:Q"
    limits_file: str | None = None  # SERVICE=memory:Q,cpu:Q lines in work/, over `limits`

    @property
    def has_limits(self) -> bool:
        """Whether the lab runs its services in cgroups, with the cAdvisor exporter."""
        return bool(self.limits or self.limits_file)

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def readme(self) -> Path:
        return self.path / "README.md"

    @property
    def starter(self) -> Path:
        return self.path / "starter"

    @property
    def solution(self) -> Path:
        return self.path / "solution"

    @property
    def checker(self) -> Path:
        return self.path / "check.py"

    @property
    def setup_script(self) -> Path:
        return self.path / "setup.py"

    @property
    def workspace(self) -> Path:
        return self.path / WORK_DIR

    @property
    def needs_services(self) -> bool:
        return bool(self.needs & {"services", "prometheus", "alertmanager"})

    @property
    def needs_prometheus(self) -> bool:
        return bool(self.needs & {"prometheus", "alertmanager"})

    def first_step(self) -> str | None:
        """The first numbered step of the README's Steps section that comes after starting
        the lab (for `lab start` to print); its first line."""
        try:
            text = self.readme.read_text()
        except OSError:
            return None
        items: list[list[str]] = []
        in_steps = False
        for line in text.splitlines():
            if line.startswith("#"):
                in_steps = line.lstrip("#").strip().lower().startswith("steps")
                continue
            if not in_steps:
                continue
            if re.match(r"^\d+\.\s", line):
                items.append([line.split(".", 1)[1].strip()])
            elif items:
                items[-1].append(line)
        for item in items:
            if "lab start" not in " ".join(item):
                return item[0]
        return None


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LabFormatError(f"{where}: expected a list of strings")
    return tuple(value)


def _env(value: Any, where: str) -> dict[str, dict[str, str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LabFormatError(f"{where}: expected {{service: {{VAR: value}}}}")
    env: dict[str, dict[str, str]] = {}
    for service, variables in value.items():
        if service not in (*SERVICE_NAMES, "*"):
            raise LabFormatError(f"{where}: unknown service {service!r}")
        if not isinstance(variables, dict):
            raise LabFormatError(f"{where}.{service}: expected {{VAR: value}}")
        env[service] = {str(k): str(v) for k, v in variables.items()}
    return env


def _traffic(value: Any, where: str) -> Traffic | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LabFormatError(f"{where}: expected a mapping")
    pulses = []
    for index, item in enumerate(value.get("pulses") or []):
        try:
            pulse = Pulse(
                service=str(item["service"]),
                step=str(item.get("step", "*")),
                delay=float(item["delay"]),
                every=float(item["every"]),
                for_seconds=float(item["for"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LabFormatError(
                f"{where}.pulses[{index}]: needs service, delay, every, for ({exc})"
            ) from exc
        if pulse.service not in SERVICE_NAMES or not 0 < pulse.for_seconds < pulse.every:
            raise LabFormatError(f"{where}.pulses[{index}]: bad service or timing")
        pulses.append(pulse)
    return Traffic(
        rate=float(value.get("rate", 5.0)),
        mix=str(value.get("mix", "mixed")),
        probes=bool(value.get("probes", False)),
        warmup=float(value.get("warmup", 0.0)),
        pulses=tuple(pulses),
    )


def load_lab(path: Path) -> Lab:
    """The lab in folder `path` (labs/<stage>/<nn>-<name>), checked against the format."""
    source = path / "lab.yaml"
    try:
        raw = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LabFormatError(f"{source}: {exc}") from exc
    if not isinstance(raw, dict):
        raise LabFormatError(f"{source}: expected a mapping")
    match = _DIR_NAME.match(path.name)
    stage = path.parent.name
    if not match or stage not in STAGES:
        raise LabFormatError(f"{path}: labs live in labs/<{'|'.join(STAGES)}>/<nn>-<name>/")
    expected_id = f"{stage}/{path.name}"
    if raw.get("id") != expected_id:
        raise LabFormatError(f"{source}: id must be {expected_id!r}, not {raw.get('id')!r}")
    if raw.get("stage") != stage:
        raise LabFormatError(f"{source}: stage must be {stage!r}")
    for key in ("title", "minutes", "hints"):
        if not raw.get(key):
            raise LabFormatError(f"{source}: {key} is required")
    needs = _strings(raw.get("needs"), f"{source}: needs")
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise LabFormatError(f"{source}: needs: unknown {sorted(unknown)}; use {list(NEEDS)}")
    faults = _strings(raw.get("faults"), f"{source}: faults")
    from servescope.cli.local.session import parse_fault  # the grammar of `up --fault`

    for fault in faults:
        try:
            service, spec = parse_fault(fault)  # every kind; service:step:seconds is a delay
        except ValueError as exc:
            reason = str(exc).split(": ", 1)[-1]
            raise LabFormatError(
                f"{source}: fault {fault!r}: write service:step:seconds (a delay) or "
                f"service:kind[:step][:value] ({reason})"
            ) from None
        if service not in SERVICE_NAMES or spec.startswith("slow_start"):
            raise LabFormatError(
                f"{source}: fault {fault!r}: a running service of the lab takes it at run "
                "time (slow_start acts at start only: set SERVESCOPE_FAULTS under env)"
            )
    answer = raw.get("answer")
    if answer is not None and not (isinstance(answer, dict) and answer.get("prompt")):
        raise LabFormatError(f"{source}: answer: expected {{prompt: ...}}")
    env_files = raw.get("env_files") or {}
    if not isinstance(env_files, dict) or set(env_files) - set(SERVICE_NAMES):
        raise LabFormatError(f"{source}: env_files: expected {{service: file in work/}}")
    allow_unready = _strings(raw.get("allow_unready"), f"{source}: allow_unready")
    if set(allow_unready) - set(SERVICE_NAMES):
        raise LabFormatError(f"{source}: allow_unready: unknown services")
    limits = _limits(raw.get("limits"), f"{source}: limits")
    limits_file = raw.get("limits_file")
    if limits_file is not None and not isinstance(limits_file, str):
        raise LabFormatError(f"{source}: limits_file: expected a file name in work/")
    lab = Lab(
        id=expected_id,
        stage=stage,
        number=match.group(1),
        name=match.group(2),
        title=str(raw["title"]),
        minutes=int(raw["minutes"]),
        path=path,
        raw=raw,
        prerequisites=_strings(raw.get("prerequisites"), f"{source}: prerequisites"),
        needs=frozenset(needs),
        env=_env(raw.get("env"), f"{source}: env"),
        faults=faults,
        hints=_strings(raw.get("hints"), f"{source}: hints"),
        answer_prompt=str(answer["prompt"]) if answer else None,
        env_files={str(k): str(v) for k, v in env_files.items()},
        allow_unready=allow_unready,
        traffic=_traffic(raw.get("traffic"), f"{source}: traffic"),
        repo_files=_strings(raw.get("repo_files"), f"{source}: repo_files"),
        tools=_strings(raw.get("tools"), f"{source}: tools"),
        timed=_timed(raw.get("timed", False), f"{source}: timed"),
        limits=limits,
        limits_file=limits_file,
    )
    if not lab.checker.is_file():
        raise LabFormatError(f"{path}: check.py is missing")
    if (lab.traffic or lab.faults or lab.env_files or lab.has_limits) and not lab.needs_services:
        raise LabFormatError(f"{source}: traffic, faults, env_files and limits need `services`")
    return lab


def _limits(value: Any, where: str) -> dict[str, str]:
    """{service: "memory:256Mi,cpu:500m"}, each checked with `up --limit`'s grammar."""
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - set(SERVICE_NAMES):
        raise LabFormatError(f'{where}: expected {{service: "memory:256Mi,cpu:500m"}}')
    from servescope.cli.local.cgroups import parse_limits

    for service, spec in value.items():
        try:
            parse_limits(str(spec))
        except ValueError as exc:
            raise LabFormatError(f"{where}.{service}: {exc}") from None
    return {str(k): str(v) for k, v in value.items()}


def _timed(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise LabFormatError(f"{where}: expected true or false")
    return value


def lab_dirs(root: Path) -> Iterator[Path]:
    """Every lab folder under root/labs, in stage order, then by number."""
    base = root / LABS_DIR
    for stage in STAGES:
        folder = base / stage
        if folder.is_dir():
            yield from sorted(p for p in folder.iterdir() if (p / "lab.yaml").is_file())


def discover(root: Path) -> list[Lab]:
    """Every lab in the repository at `root`; LabFormatError on the first malformed one."""
    return [load_lab(path) for path in lab_dirs(root)]


def discover_leniently(root: Path) -> tuple[list[Lab], dict[str, LabFormatError]]:
    """The well-formed labs, and the problem of each malformed one by its would-be id, so
    one lab being written does not stop the others."""
    labs: list[Lab] = []
    problems: dict[str, LabFormatError] = {}
    for path in lab_dirs(root):
        try:
            labs.append(load_lab(path))
        except LabFormatError as exc:
            problems[f"{path.parent.name}/{path.name}"] = exc
    return labs, problems


def find(root: Path, lab_id: str) -> Lab:
    """The lab with this id ("beginner/01-readiness-vs-liveness"); a unique prefix or the
    bare folder name ("01-readiness-vs-liveness") also works."""
    labs, problems = discover_leniently(root)
    wanted = lab_id.strip().strip("/").removeprefix("labs/")
    exact = [lab for lab in labs if lab.id == wanted]
    if exact:
        return exact[0]
    if wanted in problems:
        raise problems[wanted]
    matches = [
        lab
        for lab in labs
        if lab.id.startswith(wanted) or f"{lab.number}-{lab.name}".startswith(wanted)
    ]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(lab.id for lab in labs) or "none"
    what = "several labs match" if matches else "no lab is called"
    raise LabError(f"{what} {lab_id!r}; labs: {known} (`servescope lab list`)")
