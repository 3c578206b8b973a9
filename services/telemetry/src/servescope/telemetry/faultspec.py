"""The fault kinds the services can inject, and the one spec grammar for them.

A spec is `KIND[:STEP][:VALUE]`; a list of specs is comma-separated. The same grammar is
read from SERVESCOPE_FAULTS by every service (servescope.runtime.faults), by
`servescope up --fault SERVICE:SPEC` and by `servescope fault SERVICE KIND [STEP] [VALUE]`,
so this module (pure data and parsing, no I/O) is where the kinds, their units and their
bounds are declared. The `kind` label of servescope_fault_value lists the same names; a test
holds the contract to KINDS.

    parse("delay:resize:0.5", steps=("decode", "resize", "normalise"))
    parse_list("error:infer:0.2,crash:100", steps=("infer",))

Step kinds act inside one fault step of the service (the pipeline section of the contract
names each service's steps); service-wide kinds act on the whole process and take no step.
`leak` and `cache` take an optional step: with one they act per request at that step,
without one they act once, when switched on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# How a kind relates to a step.
STEP = "step"  # needs a step
OPTIONAL_STEP = "optional"  # a step: per request at it; none: once, when switched on
NO_STEP = "service"  # the whole service

MiB = 1024 * 1024


@dataclass(frozen=True)
class Kind:
    name: str
    step: str  # STEP, OPTIONAL_STEP or NO_STEP
    unit: str  # seconds, ratio, bytes, requests, flag
    low: float  # exclusive lower bound (values must be > low) unless equal to high
    high: float  # inclusive upper bound
    default: float | None  # value when the spec leaves it out; None: required
    meaning: str
    runtime: bool = True  # False: only at start (environment), not through the admin API

    @property
    def usage(self) -> str:
        step = {STEP: ":STEP", OPTIONAL_STEP: "[:STEP]", NO_STEP: ""}[self.step]
        value = {
            "seconds": "SECONDS",
            "ratio": "SHARE",
            "bytes": "BYTES",
            "requests": "N",
            "flag": "",
        }[self.unit]
        if value and self.default is not None:
            return f"{self.name}{step}[:{value}]"
        return f"{self.name}{step}:{value}" if value else f"{self.name}{step}"

    def bounds(self) -> str:
        if self.unit == "flag":
            return "no value"
        if self.unit == "bytes":
            return f"1 B to {int(self.high) // MiB} MiB (suffixes Ki, Mi, Gi)"
        if self.unit == "ratio":
            return f"a share above 0 and at most {self.high:g} (or a percentage)"
        if self.unit == "requests":
            return f"1 to {int(self.high)} requests"
        return f"above 0 and at most {self.high:g} seconds"


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("delay", STEP, "seconds", 0, 30, None, "sleep this long in the step (asyncio)"),
        Kind(
            "error",
            STEP,
            "ratio",
            0,
            1,
            1.0,
            "this share of requests fail in the step: 500, kind fault_injected",
        ),
        Kind("cpu", STEP, "seconds", 0, 5, None, "burn this much CPU time in the step"),
        Kind(
            "leak",
            OPTIONAL_STEP,
            "bytes",
            0,
            256 * MiB,
            None,
            "keep this many bytes of heap per request (or once): resident memory grows",
        ),
        Kind(
            "cache",
            OPTIONAL_STEP,
            "bytes",
            0,
            1024 * MiB,
            None,
            "append this many bytes per request (or once) to a file on tmpfs (/dev/shm) or "
            "in the temp dir: page cache and shared memory grow, resident memory does not",
        ),
        Kind(
            "crash",
            NO_STEP,
            "requests",
            0,
            1_000_000,
            1,
            "exit with status 1 after this many requests (probes, scrapes and admin calls "
            "do not count)",
        ),
        Kind("unready", NO_STEP, "flag", 1, 1, 1, "readiness false, liveness true (/readyz 503)"),
        Kind(
            "slow_start",
            NO_STEP,
            "seconds",
            0,
            600,
            None,
            "readiness (model load and warm-up, metadata) waits this long longer after "
            "start: the startup probe must allow it; at start only",
            runtime=False,
        ),
    )
}

# The cache fault's file: CACHE_FILE_PREFIX + "<service>-<pid>" in /dev/shm (else the temp
# dir, or SERVESCOPE_FAULT_CACHE_DIR). Its tmpfs pages outlive a killed process and stay
# charged to its memory cgroup: a restarted service removes its dead predecessors' files at
# start, and a supervisor that restarts into the same cgroup can remove the dead pid's file
# first (cache_file_name), or the restart may begin out of memory.
CACHE_FILE_PREFIX = "servescope-fault-cache-"


def cache_file_name(service: str, pid: int) -> str:
    return f"{CACHE_FILE_PREFIX}{service}-{pid}"


STEP_KINDS = tuple(k for k, v in KINDS.items() if v.step != NO_STEP)
SERVICE_KINDS = tuple(k for k, v in KINDS.items() if v.step == NO_STEP)


class FaultSpecError(ValueError):
    """A bad spec; the message names what is wrong and lists the valid forms."""


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    step: str  # "" for service-wide (and `leak`/`cache` at once)
    value: float

    def __str__(self) -> str:
        shown = f"{int(self.value)}" if self.value == int(self.value) else f"{self.value:g}"
        parts = [self.kind] + ([self.step] if self.step else [])
        if KINDS[self.kind].unit != "flag":
            parts.append(shown)
        return ":".join(parts)


def usage(steps: tuple[str, ...]) -> str:
    """The valid forms, for error messages and help texts."""
    forms = ", ".join(k.usage for k in KINDS.values())
    where = ", ".join(steps) if steps else "none (service-wide kinds only)"
    return f"valid specs: {forms}; STEP is one of: {where}"


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(|b|k|ki|kib|kb|m|mi|mib|mb|g|gi|gib|gb)$", re.I)
_FACTORS = {"": 1, "b": 1, "k": 1024, "m": MiB, "g": 1024 * MiB}
_DECIMAL = {"kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_value(kind: Kind, text: str) -> float:
    """A value in the kind's unit; FaultSpecError with the bounds otherwise."""
    raw = text.strip()
    try:
        if kind.unit == "bytes":
            found = _SIZE.match(raw)
            if not found:
                raise ValueError(raw)
            suffix = found.group(2).lower()
            factor = _DECIMAL.get(suffix) or _FACTORS[suffix[:1]]
            value = float(found.group(1)) * factor
        elif kind.unit == "ratio" and raw.endswith("%"):
            value = float(raw[:-1]) / 100
        elif kind.unit == "seconds" and raw.endswith("ms"):
            value = float(raw[:-2]) / 1000
        elif kind.unit == "seconds" and raw.endswith("s"):
            value = float(raw[:-1])
        else:
            value = float(raw)
    except ValueError:
        raise FaultSpecError(f"{kind.name}: {text!r} is not a value; {kind.bounds()}") from None
    return check_value(kind, value)


def check_value(kind: Kind, value: float) -> float:
    if kind.unit == "flag":
        if value != 1:
            raise FaultSpecError(f"{kind.name} takes no value")
        return 1.0
    if kind.unit in ("bytes", "requests"):
        value = float(int(value))
    if not kind.low < value <= kind.high:
        raise FaultSpecError(f"{kind.name}: {value:g} is out of bounds; {kind.bounds()}")
    return value


def make(
    kind_name: str, step: str | None, value: float | str | None, steps: tuple[str, ...]
) -> FaultSpec:
    """One checked spec from its parts (as the admin API and the CLI receive them)."""
    kind = KINDS.get(kind_name)
    if kind is None:
        raise FaultSpecError(f"unknown fault kind {kind_name!r}; {usage(steps)}")
    step = step or ""
    if kind.step == NO_STEP and step:
        raise FaultSpecError(f"{kind.name} applies to the whole service and takes no step")
    if kind.step == STEP and not step:
        raise FaultSpecError(f"{kind.name} needs a step; {usage(steps)}")
    if step and step not in steps:
        raise FaultSpecError(
            f"unknown step {step!r} for {kind.name}; this service's steps: "
            + (", ".join(steps) if steps else "none")
        )
    if value is None or value == "":
        if kind.default is None:
            raise FaultSpecError(f"{kind.name} needs a value ({kind.usage}): {kind.bounds()}")
        return FaultSpec(kind.name, step, kind.default)
    if isinstance(value, str):
        return FaultSpec(kind.name, step, parse_value(kind, value))
    if isinstance(value, bool):
        value = float(value)
    return FaultSpec(kind.name, step, check_value(kind, float(value)))


def parse(text: str, steps: tuple[str, ...]) -> FaultSpec:
    """`KIND[:STEP][:VALUE]` -> FaultSpec; FaultSpecError listing the valid forms otherwise."""
    parts = [p.strip() for p in text.strip().split(":")]
    kind = KINDS.get(parts[0])
    if kind is None:
        hint = (
            f" ({parts[0]!r} is a step: put the kind first, e.g. delay:{parts[0]}:0.5)"
            if parts[0] in steps
            else ""
        )
        raise FaultSpecError(f"fault {text!r}: unknown kind {parts[0]!r}{hint}; {usage(steps)}")
    rest = parts[1:]
    if len(rest) > 2:
        raise FaultSpecError(f"fault {text!r}: too many parts; write {kind.usage}")
    step: str | None = None
    if kind.step == STEP or (
        kind.step == OPTIONAL_STEP and rest and (len(rest) == 2 or rest[0] in steps)
    ):
        step = rest.pop(0) if rest else None
    if len(rest) > 1 or (kind.step == NO_STEP and len(rest) > 1):
        raise FaultSpecError(f"fault {text!r}: too many parts; write {kind.usage}")
    if kind.step == NO_STEP and rest and kind.unit == "flag":
        raise FaultSpecError(f"fault {text!r}: {kind.name} takes no step or value")
    try:
        return make(kind.name, step, rest[0] if rest else None, steps)
    except FaultSpecError as exc:
        raise FaultSpecError(f"fault {text!r}: {exc}") from None


def parse_list(text: str, steps: tuple[str, ...]) -> list[FaultSpec]:
    """Comma-separated specs (SERVESCOPE_FAULTS); empty text is no faults."""
    return [parse(item, steps) for item in text.split(",") if item.strip()]
