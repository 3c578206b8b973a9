"""`servescope models build`: distinct models, reproducible files, cards that tell the truth."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from servescope.cli import main as cli
from servescope.cli.commands import models as models_command
from servescope.cli.model_repository import (
    INDEX,
    NAME_PATTERN,
    BuildError,
    build_repository,
    catalogue,
    max_count,
)
from servescope.cli.paths import bundled_model_card, heldout_dir, model_repository_dir
from servescope.telemetry.contract import load_contract

COUNT = 6  # digits-cnn and one model of each of the first five families
BUNDLED = json.loads(bundled_model_card().read_text())


def heldout() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits as the edge sends them: PNG, then the card's normalisation."""
    norm = BUNDLED["input"]["normalisation"]
    with (heldout_dir() / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    pixels = np.stack(
        [np.asarray(Image.open(heldout_dir() / r["file"]).convert("L"), np.uint8) for r in rows]
    )
    x = (pixels.astype(np.float32) / np.float32(255) - np.float32(norm["mean"])) / np.float32(
        norm["std"]
    )
    return x.reshape(-1, 1, 8, 8), np.array([int(r["label"]) for r in rows])


def run_one_by_one(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the classifier runs it
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], {"input": x[i : i + 1]})[0] for i in range(len(x))])


def files(repo: Path) -> dict[str, bytes]:
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.rglob("*.onnx"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("models") / "repo"
    return out, build_repository(out, COUNT, seed=0, jobs=1)


def test_catalogue_fills_the_contract_and_names_are_bounded() -> None:
    specs = catalogue()
    names = [s.name for s in specs]
    assert len(set(names)) == len(names)
    assert BUNDLED["name"] not in names
    assert all(re.fullmatch(NAME_PATTERN, n) for n in names), names
    rule = load_contract().label_rules["model_name"]
    assert all(rule.allows(n) for n in names)
    # Up to the contract's max_models can be built, and any prefix mixes the families.
    assert max_count() == load_contract().max_models
    families = {s.family for s in specs}
    assert {s.family for s in specs[: len(families)]} == families


@pytest.mark.slow
def test_repository_layout_and_cards(built: tuple[Path, list[dict[str, Any]]]) -> None:
    out, cards = built
    assert [c["name"] for c in cards] == [BUNDLED["name"]] + [s.name for s in catalogue()[:5]]
    index = json.loads((out / INDEX).read_text())
    assert [m["name"] for m in index["models"]] == [c["name"] for c in cards]
    assert (out / "digits-cnn" / "digits-cnn.onnx").read_bytes() == (
        bundled_model_card().parent / "digits-cnn.onnx"
    ).read_bytes()
    for card in cards:
        folder = out / card["name"]
        assert json.loads((folder / "model-card.json").read_text()) == card
        assert sorted(p.name for p in folder.iterdir()) == sorted([card["file"], "model-card.json"])
        assert card["input"] == BUNDLED["input"]
        assert card["labels"] == BUNDLED["labels"]
        assert card["reference"] == BUNDLED["reference"]
        assert (card["output"]["name"], card["output"]["shape"]) == ("logits", [-1, 10])
        model = onnx.load(str(folder / card["file"]))
        assert [i.name for i in model.graph.input] == ["input"]
        assert [o.name for o in model.graph.output] == ["logits"]
        props = {p.key: p.value for p in model.metadata_props}
        assert props["servescope.model_name"] == card["name"]
        assert props["servescope.normalize_mean"] == repr(BUNDLED["input"]["normalisation"]["mean"])
        if card["name"] != BUNDLED["name"]:
            assert card["calibration"]["temperature"] == 1.0


@pytest.mark.slow
def test_card_accuracy_is_what_the_onnx_file_scores(
    built: tuple[Path, list[dict[str, Any]]],
) -> None:
    out, cards = built
    x, y = heldout()
    predictions = {}
    for card in cards:
        logits = run_one_by_one(out / card["name"] / card["file"], x)
        correct = int((logits.argmax(axis=1) == y).sum())
        assert correct == card["metrics"]["heldout_correct"], card["name"]
        assert card["metrics"]["heldout_accuracy"] == correct / len(y)
        assert card["metrics"]["heldout_count"] == len(y)
        assert np.isfinite(logits).all()
        if card["name"] != BUNDLED["name"]:
            # log-probabilities: softmax at temperature 1 gives the estimator's p back.
            assert np.allclose(np.exp(logits).sum(axis=1), 1.0, atol=1e-4)
            assert card["metrics"]["heldout_accuracy"] > 0.85, card["name"]
        predictions[card["name"]] = logits
    # Genuinely distinct: different files and different answers on the same digits.
    assert len({c["sha256"] for c in cards}) == len(cards)
    names = list(predictions)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.allclose(predictions[a], predictions[b]), (a, b)


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_models(
    built: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    out, _ = built
    again = build_repository(tmp_path / "again", 4, seed=0, jobs=2)  # jobs change nothing
    rebuilt = files(tmp_path / "again")
    assert len(rebuilt) == 4
    assert rebuilt == {name: data for name, data in files(out).items() if name in rebuilt}
    assert [c["sha256"] for c in again] == [
        json.loads((out / c["name"] / "model-card.json").read_text())["sha256"] for c in again
    ]
    other = build_repository(tmp_path / "other", 3, seed=1, jobs=1)
    # logistic regression does not depend on the seed; the random forest does.
    by_name = {c["name"]: c["sha256"] for c in other}
    first, forest = catalogue()[0].name, catalogue()[1].name
    assert by_name[first] == json.loads((out / first / "model-card.json").read_text())["sha256"]
    assert by_name[forest] != json.loads((out / forest / "model-card.json").read_text())["sha256"]


def test_refuses_a_foreign_directory_and_a_bad_count(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not a repository"):
        build_repository(foreign, 2)
    assert (foreign / "notes.txt").read_text() == "mine"
    for count in (0, max_count() + 1):
        with pytest.raises(BuildError, match="--count"):
            build_repository(tmp_path / "new", count)
    assert not (tmp_path / "new").exists()


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["models", "build"])
    assert args.func is models_command.cmd_models_build
    assert (args.count, args.seed, args.out) == (50, 0, None)
    assert model_repository_dir().parts[-2:] == ("build", "models")
    bad = cli.main(["models", "build", "--count", "0", "--out", str(tmp_path / "x")])
    assert bad == 1
    assert "--count must be" in capsys.readouterr().err
    assert cli.main(["models", "build", "--count", "2", "--out", str(tmp_path / "r")]) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == sorted(
        [INDEX, "digits-cnn", catalogue()[0].name]
    )
