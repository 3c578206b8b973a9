"""scoring.py: calibrated softmax, top-k and labels, checked against plain math."""

from __future__ import annotations

import math

import numpy as np
import pytest

from servescope.postprocess.scoring import labels_for, score, softmax, top_k

RNG = np.random.default_rng(12345)
TEMPERATURES = [0.01, 0.186632, 0.5, 1.0, 3.0, 100.0]


def reference_softmax(logits: list[float], temperature: float = 1.0) -> list[float]:
    """Textbook softmax with math.exp, shifted by the max (fine for these magnitudes)."""
    top = max(logits)
    exps = [math.exp((x - top) / temperature) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_softmax_matches_the_definition_and_sums_to_1(temperature: float) -> None:
    logits = RNG.normal(0, 4, size=10)
    probabilities = softmax(logits, temperature)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(
        probabilities, reference_softmax(list(logits), temperature), rtol=1e-9, atol=1e-300
    )


def test_softmax_of_a_batch_works_row_by_row() -> None:
    batch = RNG.normal(0, 3, size=(4, 10))
    probabilities = softmax(batch, 0.5)
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-12)
    for row, expected in zip(probabilities, batch, strict=True):
        np.testing.assert_allclose(row, reference_softmax(list(expected), 0.5), rtol=1e-9)


@pytest.mark.parametrize("shift", [-1e4, -7.5, 3.25, 1e4])
def test_softmax_is_invariant_to_adding_a_constant(shift: float) -> None:
    logits = RNG.normal(0, 2, size=10)
    np.testing.assert_allclose(softmax(logits + shift), softmax(logits), atol=1e-9)


def test_temperature_never_changes_the_argmax() -> None:
    for _ in range(200):
        logits = RNG.normal(0, 5, size=10)
        winner = int(np.argmax(logits))
        for temperature in TEMPERATURES:
            assert int(np.argmax(softmax(logits, temperature))) == winner


def test_lower_temperature_sharpens_higher_flattens() -> None:
    logits = np.array([2.0, 1.0, 0.0])
    top = [softmax(logits, t)[0] for t in (0.25, 1.0, 4.0)]
    assert top[0] > top[1] > top[2] > 1 / 3


def test_large_logits_do_not_overflow() -> None:
    # Any overflow or invalid operation fails the test (underflow to 0 is expected).
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        probabilities = softmax(np.array([1000.0, 999.0, -1000.0, 1e300]), 1.0)
        assert probabilities.tolist() == [0.0, 0.0, 0.0, 1.0]
        probabilities = softmax(np.array([1000.0, 999.0, -1000.0]), 1.0)
    # p0 / p1 = e and p2 is negligible.
    assert probabilities[0] == pytest.approx(1 / (1 + math.exp(-1)))
    assert probabilities[1] == pytest.approx(math.exp(-1) / (1 + math.exp(-1)))
    assert probabilities[2] == 0.0
    assert np.isfinite(softmax(np.array([710.0, 0.0]), 0.01)).all()


def test_top_k_is_ordered_by_probability() -> None:
    probabilities = np.array([0.05, 0.4, 0.1, 0.3, 0.15])
    labels = ["a", "b", "c", "d", "e"]
    ranked = top_k(probabilities, labels, 3)
    assert [r.class_index for r in ranked] == [1, 3, 4]
    assert [r.label for r in ranked] == ["b", "d", "e"]
    assert [r.probability for r in ranked] == [0.4, 0.3, 0.15]


def test_top_k_ties_keep_the_lower_index_first() -> None:
    uniform = np.full(6, 1 / 6)
    assert [r.class_index for r in top_k(uniform, list("abcdef"), 4)] == [0, 1, 2, 3]
    pairs = np.array([0.1, 0.35, 0.1, 0.35, 0.1])
    assert [r.class_index for r in top_k(pairs, list("abcde"), 5)] == [1, 3, 0, 2, 4]


def test_top_k_ties_hold_for_many_classes() -> None:
    # 1000 classes drawing from only 5 distinct probabilities: long runs of ties.
    values = RNG.choice([0.1, 0.2, 0.3, 0.4, 0.5], size=1000)
    probabilities = values / values.sum()
    labels = [f"c{i}" for i in range(1000)]
    expected = sorted(range(1000), key=lambda i: (-values[i], i))
    assert [r.class_index for r in top_k(probabilities, labels, 1000)] == expected


def test_top_k_larger_than_the_classes_returns_them_all() -> None:
    probabilities = np.array([0.2, 0.5, 0.3])
    ranked = top_k(probabilities, ["x", "y", "z"], 100)
    assert [r.class_index for r in ranked] == [1, 2, 0]


def test_labels_for_uses_the_card_when_counts_match() -> None:
    card = ["cat", "dog", "eel"]
    assert labels_for(3, card) == card
    assert labels_for(4, card) == ["0", "1", "2", "3"]
    assert labels_for(2, card) == ["0", "1"]
    assert labels_for(3, None) == ["0", "1", "2"]


def test_score_puts_it_together() -> None:
    logits = np.array([0.5, 3.0, -1.0, 2.0])
    temperature = 0.7
    expected = reference_softmax(list(logits), temperature)
    result = score(logits, ["w", "x", "y", "z"], temperature, 2)
    assert result["class_index"] == 1
    assert result["label"] == "x"
    assert result["confidence"] == pytest.approx(expected[1], abs=5e-7)
    assert [t["class_index"] for t in result["top_k"]] == [1, 3]
    assert [t["label"] for t in result["top_k"]] == ["x", "z"]
    assert result["top_k"][1]["probability"] == pytest.approx(expected[3], abs=5e-7)
    # Rounded to six decimals for the wire.
    assert result["confidence"] == round(result["confidence"], 6)
