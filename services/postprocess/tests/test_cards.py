"""cards.py: reading model cards, and refusing ones postprocess cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servescope.postprocess.cards import CardInfo, ModelCardError, load_card, load_cards

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
