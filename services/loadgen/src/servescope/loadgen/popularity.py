"""Which model each request goes to: a Zipf-like popularity over the served models.

Real fleets are skewed: a few models take most of the traffic and a long tail sees a
little. The model of rank k (1 = the first listed) is chosen with probability proportional
to 1 / k**s; s = 0 is uniform, s = 1 is Zipf's law proper. With the default 1.1 and 50
models, the first takes 26% of requests, the top ten 70% and the last 0.35%. Choices come
from a seeded generator, so a run repeats.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

DEFAULT_ZIPF_S = 1.1


def zipf_weights(count: int, s: float) -> list[float]:
    """The share of each rank 1..count, summing to 1."""
    if count < 1:
        raise ValueError("there must be at least one model")
    if s < 0:
        raise ValueError(f"the Zipf exponent must be >= 0, not {s}")
    raw = [1.0 / rank**s for rank in range(1, count + 1)]
    total = sum(raw)
    return [weight / total for weight in raw]


def repository_models(directory: Path) -> list[str]:
    """The model names of a model repository (`<directory>/<name>/model-card.json`), sorted."""
    names = sorted(card.parent.name for card in directory.glob("*/model-card.json"))
    if not names:
        raise ValueError(f"{directory} holds no model (no <name>/model-card.json)")
    return names


class ModelPicker:
    """Picks a model for each request, the first listed being the most popular."""

    def __init__(self, names: list[str], s: float = DEFAULT_ZIPF_S, seed: int = 0) -> None:
        if len(set(names)) != len(names):
            raise ValueError("a model is listed twice")
        self.names = list(names)
        self.weights = zipf_weights(len(names), s)
        self._cumulative = list(itertools.accumulate(self.weights))
        self._rng = random.Random(seed)  # nosec B311 - a seeded traffic mix, not a secret

    def pick(self) -> str:
        return self._rng.choices(self.names, cum_weights=self._cumulative)[0]
