"""The fault spec grammar: every kind, its bounds, and errors that list the valid forms."""

from __future__ import annotations

import pytest

from servescope.telemetry.contract import load_contract
from servescope.telemetry.faultspec import KINDS, FaultSpec, FaultSpecError, parse, parse_list

STEPS = ("decode", "resize", "normalise")
MiB = 1024 * 1024


def test_the_contract_lists_exactly_these_kinds() -> None:
    assert load_contract().label_rules["kind"].values == tuple(KINDS)


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("delay:resize:0.5", FaultSpec("delay", "resize", 0.5)),
        ("delay:resize:250ms", FaultSpec("delay", "resize", 0.25)),
        ("error:resize", FaultSpec("error", "resize", 1.0)),
        ("error:resize:20%", FaultSpec("error", "resize", 0.2)),
        ("cpu:decode:0.1", FaultSpec("cpu", "decode", 0.1)),
        ("leak:resize:1Mi", FaultSpec("leak", "resize", MiB)),
        ("leak:64MiB", FaultSpec("leak", "", 64 * MiB)),
        ("cache:decode:512Ki", FaultSpec("cache", "decode", 512 * 1024)),
        ("cache:1MB", FaultSpec("cache", "", 1_000_000)),
        ("crash", FaultSpec("crash", "", 1)),
        ("crash:100", FaultSpec("crash", "", 100)),
        ("unready", FaultSpec("unready", "", 1)),
        ("slow_start:20", FaultSpec("slow_start", "", 20)),
    ],
)
def test_every_kind_parses_and_prints_back(text: str, spec: FaultSpec) -> None:
    assert parse(text, STEPS) == spec
    assert parse(str(spec), STEPS) == spec


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("teleport:resize:1", "unknown kind 'teleport'; valid specs: delay:STEP:SECONDS"),
        ("delay:warp:1", "this service's steps: decode, resize, normalise"),
        ("delay:resize", "delay needs a value"),
        ("delay:1", "unknown step '1'"),
        ("delay:resize:31", "at most 30 seconds"),
        ("delay:resize:-1", "out of bounds"),
        ("error:resize:1.5", "at most 1"),
        ("cpu:resize:6", "at most 5 seconds"),
        ("leak:resize:1Ti", "suffixes Ki, Mi, Gi"),
        ("cache:2Gi", "to 1024 MiB"),
        ("crash:0", "1 to 1000000 requests"),
        ("crash:resize:1", "too many parts"),
        ("unready:1", "takes no step or value"),
        ("slow_start", "needs a value"),
    ],
)
def test_bad_specs_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(FaultSpecError, match=None) as failed:
        parse(text, STEPS)
    assert says in str(failed.value)


def test_a_list_is_comma_separated_and_empty_is_none() -> None:
    assert parse_list("", STEPS) == []
    assert parse_list(" delay:resize:0.5 , crash:3 ", STEPS) == [
        FaultSpec("delay", "resize", 0.5),
        FaultSpec("crash", "", 3),
    ]
    # A service without steps (the responder) takes only service-wide kinds.
    with pytest.raises(FaultSpecError, match="steps: none"):
        parse("delay:infer:1", ())
    assert parse("leak:1Mi", ()) == FaultSpec("leak", "", MiB)
