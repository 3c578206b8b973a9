"""Past one machine, on paper: volumes measured at a few fleet sizes, fitted as a straight
line in the number of models (least squares), read off at 500 and 5,000 models.

Each quantity is `intercept + slope * models`: the intercept is what does not grow with the
fleet (Prometheus's and the runtime's own series), the slope what each model adds (its
series, and its share of the traffic: the measuring runs give every model the same traffic,
so log and span volume grow with the fleet as they do in a real one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from servescope.cli.local.cgroups import parse_memory

TARGETS = (500, 5000)
# The fitted quantities: each is a number in every run's figures.
QUANTITIES = (
    "billed_series",
    "head_series",
    "billed_samples_per_second",
    "log_lines_per_second",
    "log_bytes_per_second",
    "spans_per_second",
    "span_bytes_per_second",
)


@dataclass(frozen=True)
class Line:
    intercept: float
    slope: float

    def at(self, models: float) -> float:
        return max(0.0, self.intercept + self.slope * models)


def fit(points: list[tuple[float, float]]) -> Line:
    """Least-squares line through (models, value); one point: a line through the origin."""
    if not points:
        raise ValueError("no measurements to fit")
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    if len(set(xs.tolist())) < 2:
        return Line(0.0, float(ys.mean() / xs.mean()) if xs.mean() else 0.0)
    slope, intercept = np.polyfit(xs, ys, 1)
    return Line(float(intercept), float(slope))


def fit_all(runs: list[dict[str, Any]]) -> dict[str, Line]:
    """One line per quantity over the runs (each: {"models": n, "figures": {...}})."""
    return {
        name: fit([(run["models"], float(run["figures"][name])) for run in runs])
        for name in QUANTITIES
    }


@dataclass(frozen=True)
class StackFacts:
    """What the template's Kubernetes stack declares (deploy/stack/kube-prometheus-stack.yaml)."""

    scrape_interval_seconds: float
    prometheus_memory_limit_bytes: int

    @classmethod
    def load(cls, values: Path) -> StackFacts:
        spec = yaml.safe_load(values.read_text())["prometheus"]["prometheusSpec"]
        interval = str(spec["scrapeInterval"])
        seconds = float(interval[:-1]) * {"s": 1, "m": 60}[interval[-1]]
        return cls(seconds, parse_memory(str(spec["resources"]["limits"]["memory"])))


def memory_per_series(points: list[tuple[float, float]]) -> Line:
    """Prometheus's resident memory as fixed + per head series, fitted over (head series,
    RSS) of every run; with too few runs or a slope that is not positive (RSS is noisy: the
    Go heap grows in steps), the whole RSS over the head series of the largest run."""
    line = fit(points) if len({x for x, _ in points}) > 1 else Line(0.0, 0.0)
    if line.slope > 0 and line.intercept >= 0:
        return line
    series, rss = max(points)
    return Line(0.0, rss / series if series else 0.0)


def models_at_capacity(head_series: Line, memory: Line, limit_bytes: int) -> float | None:
    """The fleet size at which one Prometheus's head outgrows its memory limit (None: never,
    the series do not grow with models)."""
    if head_series.slope <= 0 or memory.slope <= 0:
        return None
    series = (limit_bytes - memory.intercept) / memory.slope
    return max(0.0, (series - head_series.intercept) / head_series.slope)
