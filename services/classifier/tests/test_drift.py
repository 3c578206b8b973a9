"""Drift scores from the monitor itself, on the card's reference and on synthetic inputs."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from servescope.classifier.drift import THRESHOLDS, DriftMonitor, DriftReference, psi
from servescope.cli.paths import bundled_model_dir

CARD = json.loads((bundled_model_dir() / "model-card.json").read_text())
MEAN = CARD["input"]["normalisation"]["mean"]
STD = CARD["input"]["normalisation"]["std"]


def normalised(pixels01: np.ndarray) -> np.ndarray:
    return ((pixels01 - MEAN) / STD).astype(np.float32).reshape(-1, 1, 8, 8)


def reference_like(count: int, rng: np.random.Generator) -> np.ndarray:
    """Pixels drawn from the card's own histogram: no drift by construction."""
    proportions = np.asarray(CARD["reference"]["pixel_histogram"]["proportions"])
    bins = rng.choice(len(proportions), size=(count, 64), p=proportions / proportions.sum())
    return (bins + 0.5) / len(proportions)


def logits_for(classes: np.ndarray) -> np.ndarray:
    logits = np.zeros((len(classes), 10), dtype=np.float32)
    logits[np.arange(len(classes)), classes] = 5.0
    return logits


def test_psi_is_zero_for_identical_and_grows_with_difference() -> None:
    p = np.array([0.5, 0.3, 0.2])
    assert psi(p, p) == pytest.approx(0.0)
    assert 0 < psi(np.array([0.45, 0.35, 0.2]), p) < psi(np.array([0.2, 0.3, 0.5]), p)


def test_reference_inputs_score_low_and_inverted_ones_high() -> None:
    rng = np.random.default_rng(0)
    reference = DriftReference.from_card(CARD)
    prior = np.asarray(CARD["reference"]["class_prior"])
    classes = rng.choice(10, size=100, p=prior / prior.sum())
    calm = DriftMonitor(reference, MEAN, STD, window=100)
    pixels = reference_like(100, rng)
    calm.update(normalised(pixels), logits_for(classes))
    assert all(value < THRESHOLDS[name] for name, value in calm.scores().items())

    drifted = DriftMonitor(reference, MEAN, STD, window=100)
    drifted.update(normalised(1.0 - pixels), logits_for(np.full(100, 3)))
    scores = drifted.scores()
    assert scores["pixel_psi"] > THRESHOLDS["pixel_psi"]
    assert scores["class_psi"] > THRESHOLDS["class_psi"]
    assert scores["mean_intensity_shift"] > THRESHOLDS["mean_intensity_shift"]


def test_the_window_forgets_old_inputs() -> None:
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(DriftReference.from_card(CARD), MEAN, STD, window=50)
    monitor.update(normalised(1.0 - reference_like(50, rng)), logits_for(np.full(50, 3)))
    assert monitor.scores()["pixel_psi"] > THRESHOLDS["pixel_psi"]
    for _ in range(5):  # one at a time, through the eviction path
        monitor.update(normalised(reference_like(10, rng)), logits_for(rng.integers(0, 10, 10)))
    assert len(monitor) == 50
    assert monitor.scores()["pixel_psi"] < THRESHOLDS["pixel_psi"]


def test_scores_stay_zero_until_the_window_holds_the_minimum() -> None:
    monitor = DriftMonitor(DriftReference.from_card(CARD), MEAN, STD, window=100)
    monitor.update(normalised(np.ones((19, 64))), logits_for(np.zeros(19, dtype=int)))
    assert monitor.scores() == dict.fromkeys(THRESHOLDS, 0.0)


def test_a_card_with_unequal_bins_is_refused() -> None:
    card = copy.deepcopy(CARD)
    card["reference"]["pixel_histogram"]["bin_edges"][1] = 0.05
    with pytest.raises(ValueError, match="equal width"):
        DriftReference.from_card(card)
