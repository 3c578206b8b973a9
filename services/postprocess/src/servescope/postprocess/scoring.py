"""Turning logits into an answer: calibrated softmax, top-k and labels. Pure numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Ranked:
    class_index: int
    label: str
    probability: float


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax over the last axis of `logits / temperature`, stable for large logits.

    Temperature scaling (fitted on a validation split, recorded in the model card) is the
    calibration: it changes confidence, never the predicted class.
    """
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    result: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return result


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[Ranked]:
    k = min(k, probabilities.shape[-1])
    # argsort on the negated values is stable, so ties keep the lower class index first
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [Ranked(int(i), labels[int(i)], float(probabilities[int(i)])) for i in order]


def labels_for(count: int, card_labels: list[str] | None) -> list[str]:
    if card_labels is not None and len(card_labels) == count:
        return card_labels
    return [str(i) for i in range(count)]


def score(logits: np.ndarray, labels: list[str], temperature: float, k: int) -> dict[str, Any]:
    probabilities = softmax(logits, temperature)
    ranked = top_k(probabilities, labels, k)
    best = ranked[0]
    return {
        "class_index": best.class_index,
        "label": best.label,
        "confidence": round(best.probability, 6),
        "top_k": [
            {"class_index": r.class_index, "label": r.label, "probability": round(r.probability, 6)}
            for r in ranked
        ],
    }
