"""`up --fault` specs (every kind, and the older SERVICE:STEP:SECONDS) and the environment
they become; `servescope fault` without a running service."""

from __future__ import annotations

from pathlib import Path

import pytest

from servescope.cli.local.session import LocalSession, parse_fault
from servescope.cli.main import main


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("preprocess:delay:resize:0.5", ("preprocess", "delay:resize:0.5")),
        ("preprocess:resize:0.5", ("preprocess", "delay:resize:0.5")),  # the older form
        ("classifier:error:infer:0.2", ("classifier", "error:infer:0.2")),
        ("classifier:cache:infer:4Mi", ("classifier", "cache:infer:4194304")),
        ("classifier:leak:64Mi", ("classifier", "leak:67108864")),
        ("postprocess:cpu:softmax_topk:0.1", ("postprocess", "cpu:softmax_topk:0.1")),
        ("postprocess:crash:100", ("postprocess", "crash:100")),
        ("classifier:unready", ("classifier", "unready")),
        ("classifier:slow_start:20", ("classifier", "slow_start:20")),
    ],
)
def test_up_fault_accepts_every_kind(spec: str, parsed: tuple[str, str]) -> None:
    assert parse_fault(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("gateway:delay:resize:1", "no service 'gateway'"),
        ("preprocess:resize", "'resize' is a step: put the kind first"),
        ("preprocess:delay:resize", "delay needs a value"),
        ("preprocess:warp:1", "unknown kind 'warp'"),
        ("classifier:delay:resize:1", "this service's steps: infer"),
        ("classifier:error:infer:3", "at most 1"),
    ],
)
def test_up_fault_refuses_bad_specs_listing_the_forms(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match="SERVICE:KIND") as failed:
        parse_fault(spec)
    assert says in str(failed.value)
    assert "SERVICE:STEP:SECONDS" in str(failed.value)


def test_faults_of_one_service_share_its_servescope_faults(tmp_path: Path) -> None:
    session = LocalSession(
        run_dir=tmp_path,
        faults=["classifier:cache:infer:1Mi", "classifier:unready", "preprocess:resize:0.5"],
    )
    env = session.service_env()
    assert env["classifier"]["SERVESCOPE_FAULTS"] == "cache:infer:1048576,unready"
    assert env["preprocess"]["SERVESCOPE_FAULTS"] == "delay:resize:0.5"
    assert "SERVESCOPE_FAULTS" not in env["postprocess"]


def test_fault_needs_the_token_file_and_a_service(tmp_path: Path, capsys) -> None:
    assert main(["fault", "classifier", "unready", "--token-file", str(tmp_path / "none")]) == 1
    assert "no admin token" in capsys.readouterr().out
    token = tmp_path / "token"
    token.write_text("t")
    assert main(["fault", "--token-file", str(token)]) == 2
    assert "--clear" in capsys.readouterr().out
    assert main(["fault", "classifier", "meltdown", "--token-file", str(token)]) == 2
    assert "valid specs" in capsys.readouterr().out
