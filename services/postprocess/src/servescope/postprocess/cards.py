"""Model cards: where postprocess learns each model's labels and calibration temperature."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CardInfo:
    name: str
    version: str
    labels: list[str]
    temperature: float


class ModelCardError(Exception):
    pass


def load_card(path: Path) -> CardInfo:
    try:
        card = json.loads(path.read_text())
        calibration = card.get("calibration") or {}
        info = CardInfo(
            name=str(card["name"]),
            version=str(card["version"]),
            labels=[str(label) for label in card["labels"]],
            temperature=float(calibration.get("temperature", 1.0)),
        )
        # softmax(logits / T): T <= 0 would divide by zero or invert the ranking.
        if not (math.isfinite(info.temperature) and info.temperature > 0):
            raise ValueError(f"calibration temperature must be > 0, not {info.temperature}")
        return info
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelCardError(f"cannot use model card {path}: {exc}") from exc


def load_cards(paths: list[Path]) -> dict[str, CardInfo]:
    cards = [load_card(path) for path in paths]
    return {card.name: card for card in cards}
