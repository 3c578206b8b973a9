"""Input drift: recent inputs against the model card's reference statistics. Pure numpy.

Three signals over a sliding window of the most recent inputs:
* pixel_psi: population stability index of the pixel-intensity histogram (10 bins on the
  0-1 scale) against the training histogram. PSI < 0.1 is stable, 0.1-0.25 moderate, and
  > 0.25 significant drift (the usual credit-scoring bands).
* class_psi: PSI of the predicted-class distribution against the training class prior.
* mean_intensity_shift: |window mean intensity - training mean intensity|.

Their thresholds are declared in the telemetry contract's pipeline section (THRESHOLDS).
A request only queues its batch; the window's statistics are computed when the scores are
read (each scrape), for every batch queued since, in one set of numpy calls: per request,
numpy's call overhead was ~11% of the classifier's CPU (measured with py-spy under load).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from servescope.telemetry.pipeline import PIPELINE

# The signals scores() computes, checked against the declared ones at import.
PIXEL_PSI, CLASS_PSI, MEAN_INTENSITY_SHIFT = (
    s.name
    for s in PIPELINE.expect_drift_signals(
        "pixel_psi", "class_psi", "mean_intensity_shift", where=__name__
    )
)
THRESHOLDS: Mapping[str, float] = PIPELINE.drift_thresholds
_EPS = 1e-4  # floor for proportions in PSI, so empty bins do not give infinities


@dataclass(frozen=True)
class DriftReference:
    pixel_proportions: np.ndarray  # over equal-width bins spanning 0 to 1
    mean_intensity: float
    class_prior: np.ndarray

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> DriftReference:
        ref = card["reference"]
        edges = np.asarray(ref["pixel_histogram"]["bin_edges"], dtype=np.float64)
        # The monitor bins by arithmetic (floor of value x bins), which holds only for
        # equal-width bins from 0 to 1; refuse a card that says otherwise.
        if not np.allclose(edges, np.linspace(0.0, 1.0, len(edges))):
            raise ValueError("drift needs pixel_histogram bins of equal width from 0 to 1")
        return cls(
            pixel_proportions=np.asarray(ref["pixel_histogram"]["proportions"], dtype=np.float64),
            mean_intensity=float(ref["mean_intensity"]),
            class_prior=np.asarray(ref["class_prior"], dtype=np.float64),
        )


def psi(observed: np.ndarray, expected: np.ndarray) -> float:
    o = np.clip(observed, _EPS, None)
    e = np.clip(expected, _EPS, None)
    return float(np.sum((o - e) * np.log(o / e)))


class DriftMonitor:
    def __init__(
        self,
        reference: DriftReference,
        normalize_mean: float,
        normalize_std: float,
        window: int = 200,
        min_inputs_pixels: int = 20,
        min_inputs_classes: int = 100,
    ) -> None:
        self.reference = reference
        self.mean = normalize_mean
        self.std = normalize_std
        self.window = window
        self.min_pixels = min_inputs_pixels
        # The class signal needs more inputs: with k classes, sampling noise alone gives a
        # PSI near (k - 1) / n, 0.09 at n = 100 for 10 classes.
        self.min_classes = min_inputs_classes
        self.bins = len(reference.pixel_proportions)
        self.classes = len(reference.class_prior)
        # The window: per input, its pixel-bin counts, mean intensity and predicted class.
        self._rows: deque[tuple[np.ndarray, float, int]] = deque(maxlen=window)
        # Batches not yet in the window, never more than a window's worth of inputs.
        self._pending: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self._pending_inputs = 0

    def __len__(self) -> int:
        self._fold()
        return len(self._rows)

    def update(self, inputs: np.ndarray, logits: np.ndarray) -> None:
        """Add a batch: inputs as the model saw them (normalised), logits as it answered."""
        batch = inputs.shape[0]
        if batch == 0:
            return  # an empty batch says nothing about the inputs (and cannot be reshaped)
        self._pending.append((inputs.reshape(batch, -1), logits.reshape(batch, -1)))
        self._pending_inputs += batch
        # Only the newest `window` inputs count: older batches are dropped unread.
        while self._pending_inputs - len(self._pending[0][0]) >= self.window:
            self._pending_inputs -= len(self._pending.popleft()[0])

    def _fold(self) -> None:
        """Move the queued batches into the window (same width: one set of numpy calls)."""
        if not self._pending:
            return
        widths = {inputs.shape[1] for inputs, _ in self._pending}
        groups = (
            [
                (
                    np.concatenate([i for i, _ in self._pending]),
                    np.concatenate([x for _, x in self._pending]),
                )
            ]
            if len(widths) == 1 and len({x.shape[1] for _, x in self._pending}) == 1
            else list(self._pending)
        )
        self._pending.clear()
        self._pending_inputs = 0
        for inputs, logits in groups:
            self._add(inputs[-self.window :], logits[-self.window :])

    def _add(self, inputs: np.ndarray, logits: np.ndarray) -> None:
        batch = inputs.shape[0]
        raw = inputs.astype(np.float64) * self.std + self.mean
        # Bin index per pixel; the small offset keeps pixel values that sit exactly on an
        # edge (k/10) in the upper bin despite float round trips, like numpy.histogram.
        index = np.clip(np.floor(raw * self.bins + 1e-4), 0, self.bins - 1).astype(np.int64)
        offsets = (np.arange(batch) * self.bins)[:, None]
        counts = np.bincount((index + offsets).ravel(), minlength=batch * self.bins)
        counts = counts.reshape(batch, self.bins)
        means = raw.mean(axis=1)
        predicted = np.argmax(logits, axis=1)
        for row in range(batch):
            cls = int(predicted[row]) if predicted[row] < self.classes else -1
            self._rows.append((counts[row], float(means[row]), cls))

    def scores(self) -> dict[str, float]:
        self._fold()
        n = len(self._rows)
        result = dict.fromkeys(THRESHOLDS, 0.0)
        if n >= self.min_pixels:
            pixel_counts = np.sum([counts for counts, _, _ in self._rows], axis=0)
            result[PIXEL_PSI] = psi(
                pixel_counts / pixel_counts.sum(), self.reference.pixel_proportions
            )
            mean = sum(m for _, m, _ in self._rows) / n
            result[MEAN_INTENSITY_SHIFT] = abs(mean - self.reference.mean_intensity)
        classes = [c for _, _, c in self._rows if c >= 0]
        if len(classes) >= self.min_classes:
            class_counts = np.bincount(classes, minlength=self.classes)
            result[CLASS_PSI] = psi(class_counts / len(classes), self.reference.class_prior)
        return result
