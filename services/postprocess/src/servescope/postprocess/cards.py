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
    """The cards by model name; two different cards for one name are refused."""
    cards: dict[str, CardInfo] = {}
    for path in paths:
        card = load_card(path)
        if cards.get(card.name, card) != card:
            raise ModelCardError(f"model card {path} differs from another card for {card.name}")
        cards[card.name] = card
    return cards


def repository_cards(directory: Path, max_models: int) -> list[Path]:
    """The card of every model in a model repository (`<directory>/<name>/model-card.json`),
    at most `max_models` (the contract's bound on the model_name label)."""
    if not directory.is_dir():
        raise ModelCardError(f"model repository {directory} is not a directory")
    paths = sorted(directory.glob("*/model-card.json"))
    if not paths:
        raise ModelCardError(f"model repository {directory} holds no <name>/model-card.json")
    if len(paths) > max_models:
        raise ModelCardError(
            f"model repository {directory} holds {len(paths)} models, more than the "
            f"{max_models} the telemetry contract allows (max_models)"
        )
    return paths
