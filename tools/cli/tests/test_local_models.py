"""Local mode with a model repository: who is told about it, the traffic's arguments, and
`up --models N` reusing or building the repository."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from servescope.cli import main as cli
from servescope.cli.local.services import SERVICES, LocalStack, LocalStackError
from servescope.cli.local.session import TrafficProcess, ensure_model_repository
from servescope.loadgen.command import add_arguments


def test_the_repository_goes_to_classifier_and_postprocess_only(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    stack = LocalStack(run_dir=tmp_path, model_repository=repository)
    for name in SERVICES:
        env = stack.services[name].env
        if name == "preprocess":  # the edge learns the models from the classifier
            assert "SERVESCOPE_MODEL_REPOSITORY" not in env
        else:
            assert env["SERVESCOPE_MODEL_REPOSITORY"] == str(repository.resolve())
    plain = LocalStack(run_dir=tmp_path)
    assert not any("SERVESCOPE_MODEL_REPOSITORY" in s.env for s in plain.services.values())


def test_traffic_spreads_over_the_repository_only_when_one_is_served(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    for name in ("digits-b", "digits-a"):
        (repository / name).mkdir(parents=True)
        (repository / name / "model-card.json").write_text(json.dumps({"name": name}))
    parser = argparse.ArgumentParser()
    add_arguments(parser)

    plain = TrafficProcess(tmp_path, "http://127.0.0.1:8000", 2.0).command()
    assert not any(arg.startswith("--model") for arg in plain)
    assert parser.parse_args(plain[3:]).model_repository is None

    spread = TrafficProcess(
        tmp_path, "http://127.0.0.1:8000", 2.0, model_repository=repository
    ).command()
    assert f"--model-repository={repository.resolve()}" in spread
    assert parser.parse_args(spread[3:]).model_repository == repository.resolve()


def test_up_takes_a_repository_or_a_model_count_not_both() -> None:
    parser = cli.build_parser()
    defaults = parser.parse_args(["up"])
    assert (defaults.model_repository, defaults.models) == (None, None)
    assert parser.parse_args(["up", "--models", "10"]).models == 10
    assert parser.parse_args(["up", "--model-repository", "m"]).model_repository == Path("m")
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--models", "10", "--model-repository", "m"])


def test_a_repository_of_the_right_size_is_reused_and_another_is_built(tmp_path: Path) -> None:
    said: list[str] = []
    repository = tmp_path / "models"
    repository.mkdir()
    (repository / "repository.json").write_text(json.dumps({"count": 1, "models": []}))
    assert ensure_model_repository(1, repository, said.append) == repository
    assert said == []  # its index says 1 model: used as it is
    assert not (repository / "digits-cnn").exists()

    # Any other count is handed to the builder (which refuses, before any training, to
    # replace a folder it did not build): its refusal comes back as a LocalStackError.
    (repository / "repository.json").unlink()
    (repository / "mine.txt").write_text("not a model repository")
    with pytest.raises(LocalStackError, match="cannot build the model repository"):
        ensure_model_repository(3, repository, said.append)
    assert said == [f"building 3 models into {repository} (servescope models build) ..."]
    assert (repository / "mine.txt").exists()
