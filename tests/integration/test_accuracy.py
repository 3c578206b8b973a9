"""End to end: every held-out digit through the public edge scores the model card's accuracy."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

# A hang fails here, with every started process stopped, instead of stalling CI.
pytestmark = pytest.mark.timeout(90)

# How many held-out digits also go through as multipart/form-data uploads.
MULTIPART_SAMPLES = 12


def _heldout(heldout_dir: Path) -> list[tuple[str, bytes, str]]:
    with (heldout_dir / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [(row["file"], (heldout_dir / row["file"]).read_bytes(), row["label"]) for row in rows]


def _check_answer(answer: dict[str, Any], labels: list[str], model: dict[str, Any]) -> None:
    assert isinstance(answer["label"], str)
    assert isinstance(answer["class_index"], int)
    assert 0 <= answer["class_index"] < len(labels)
    assert answer["label"] == labels[answer["class_index"]]
    confidence = answer["confidence"]
    assert isinstance(confidence, float | int)
    assert 0.0 <= confidence <= 1.0
    top = answer["top_k"]
    assert isinstance(top, list)
    assert 1 <= len(top) <= len(labels)
    probabilities = [entry["probability"] for entry in top]
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert probabilities == sorted(probabilities, reverse=True)
    # Each probability is rounded to 6 decimals, which may add up to 5e-7 apiece.
    assert math.fsum(probabilities) <= 1.0 + len(top) * 5e-7
    assert top[0]["class_index"] == answer["class_index"]
    assert top[0]["label"] == answer["label"]
    assert top[0]["probability"] == confidence
    assert len({entry["class_index"] for entry in top}) == len(top)
    for entry in top:
        assert entry["label"] == labels[entry["class_index"]]
    assert answer["model_name"] == model["name"]
    assert answer["model_version"] == model["versions"][0]


@pytest.mark.slow
def test_heldout_accuracy_matches_model_card(start_stack, model_card, heldout_dir) -> None:
    stack = start_stack()
    samples = _heldout(heldout_dir)
    assert len(samples) == model_card["metrics"]["heldout_count"]
    labels = model_card["labels"]

    classifier_url = stack.services["classifier"].url
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        metadata = httpx.get(f"{classifier_url}/v2/models/digits-cnn", timeout=5)
        assert metadata.status_code == 200
        model = metadata.json()
        assert model["name"] == model_card["name"]

        correct = 0
        raw_answers: dict[str, dict[str, Any]] = {}
        for name, body, label in samples:
            response = client.post(
                "/v1/predict", content=body, headers={"content-type": "image/png"}
            )
            assert response.status_code == 200, (name, response.text)
            answer = response.json()
            _check_answer(answer, labels, model)
            raw_answers[name] = answer
            correct += answer["label"] == label

        accuracy = correct / len(samples)
        assert accuracy == model_card["metrics"]["heldout_accuracy"], (
            f"{correct}/{len(samples)} correct through the services"
        )
        assert correct == model_card["metrics"]["heldout_correct"]

        # The same digits as multipart uploads (what a browser form sends) answer the same.
        step = len(samples) // MULTIPART_SAMPLES
        for name, body, _ in samples[::step][:MULTIPART_SAMPLES]:
            response = client.post(
                "/v1/predict",
                files={"image": (name, body, "image/png")},
                data={"note": "a form field that is not the file"},
            )
            assert response.status_code == 200, (name, response.text)
            answer = response.json()
            _check_answer(answer, labels, model)
            assert answer == raw_answers[name]
