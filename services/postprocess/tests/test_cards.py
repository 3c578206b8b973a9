"""cards.py: reading model cards, and refusing ones postprocess cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servescope.postprocess.cards import (
    CardInfo,
    ModelCardError,
    load_card,
    load_cards,
    repository_cards,
)

BUNDLED = Path(__file__).resolve().parents[2] / "classifier" / "model" / "model-card.json"


def test_bundled_card() -> None:
    raw = json.loads(BUNDLED.read_text())
    card = load_card(BUNDLED)
    assert card == CardInfo(
        name=raw["name"],
        version=raw["version"],
        labels=raw["labels"],
        temperature=raw["calibration"]["temperature"],
    )


def test_labels_and_version_become_strings_and_temperature_defaults_to_1(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "m", "version": 2, "labels": [0, 1, "two"]}))
    assert load_card(path) == CardInfo("m", "2", ["0", "1", "two"], 1.0)


def test_cards_are_keyed_by_model_name(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"name": "other", "version": "1", "labels": ["a", "b"]}))
    cards = load_cards([BUNDLED, other])
    assert sorted(cards) == sorted(["other", json.loads(BUNDLED.read_text())["name"]])
    assert cards["other"].labels == ["a", "b"]
    assert load_cards([]) == {}


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        "null",
        '"a string"',
        '{"version": "1", "labels": []}',
        '{"name": "m", "labels": []}',
        '{"name": "m", "version": "1", "labels": 7}',
        '{"name": "m", "version": "1", "labels": [], "calibration": {"temperature": "x"}}',
        '{"name": "m", "version": "1", "labels": [], "calibration": {"temperature": 0.0}}',
        '{"name": "m", "version": "1", "labels": [], "calibration": {"temperature": -2}}',
        '{"name": "m", "version": "1", "labels": [], "calibration": {"temperature": "inf"}}',
    ],
)
def test_unusable_cards_raise_model_card_error_naming_the_file(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "bad-card.json"
    path.write_text(content)
    with pytest.raises(ModelCardError) as caught:
        load_card(path)
    assert str(path) in str(caught.value)


def test_one_bad_card_fails_the_lot(tmp_path: Path) -> None:
    with pytest.raises(ModelCardError):
        load_cards([BUNDLED, tmp_path / "absent.json"])


def _repository(root: Path, cards: dict[str, dict]) -> Path:
    for name, fields in cards.items():
        (root / name).mkdir(parents=True)
        card = {"name": name, "version": "1", "labels": ["a", "b"], **fields}
        (root / name / "model-card.json").write_text(json.dumps(card))
    return root


def test_a_repository_gives_one_card_per_model_directory(tmp_path: Path) -> None:
    repo = _repository(tmp_path / "models", {"m-b": {}, "m-a": {}})
    (repo / "notes.txt").write_text("not a model")
    (repo / "empty-dir").mkdir()
    paths = repository_cards(repo, max_models=2)
    assert paths == [repo / "m-a" / "model-card.json", repo / "m-b" / "model-card.json"]
    assert sorted(load_cards(paths)) == ["m-a", "m-b"]


def test_a_repository_over_max_models_is_refused(tmp_path: Path) -> None:
    repo = _repository(tmp_path, {"m1": {}, "m2": {}, "m3": {}})
    with pytest.raises(ModelCardError, match="3 models, more than the 2"):
        repository_cards(repo, max_models=2)


@pytest.mark.parametrize("problem", ["absent", "empty"])
def test_a_repository_without_cards_is_refused(tmp_path: Path, problem: str) -> None:
    repo = tmp_path / "models"
    if problem == "empty":
        repo.mkdir()
    with pytest.raises(ModelCardError) as caught:
        repository_cards(repo, max_models=100)
    assert str(repo) in str(caught.value)


def test_two_different_cards_for_one_model_are_refused(tmp_path: Path) -> None:
    repo = _repository(tmp_path, {"same": {}})
    twin = tmp_path / "twin.json"
    twin.write_text((repo / "same" / "model-card.json").read_text())
    assert sorted(load_cards([twin, repo / "same" / "model-card.json"])) == ["same"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"name": "same", "version": "2", "labels": ["a", "b"]}))
    with pytest.raises(ModelCardError, match="differs from another card for same"):
        load_cards([twin, other])
