"""The price table (deploy/cost/prices.yaml) and the arithmetic from volumes to a monthly bill.

Pure functions: the measuring and the projection hand in volumes (series, samples per second,
bytes per second), this module prices them. Metrics are billed the way managed Prometheus
backends bill them: on the larger of the active series and the data points per minute over
the DPM a series includes, so scraping more often costs more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GB = 1e9  # vendors bill decimal gigabytes
PILLARS = ("metrics", "logs", "traces")


@dataclass(frozen=True)
class Prices:
    source: str
    as_of: str
    currency: str
    days_per_month: float
    per_1k_series_month: float
    included_dpm_per_series: float
    logs_per_gb: float
    traces_per_gb: float

    @property
    def seconds_per_month(self) -> float:
        return self.days_per_month * 86400


@dataclass(frozen=True)
class Volumes:
    """What one configuration sends, per second (series: at any moment)."""

    series: float
    samples_per_second: float  # at the measuring Prometheus's scrape interval
    measured_scrape_interval_seconds: float
    log_bytes_per_second: float
    span_bytes_per_second: float


def load(path: Path) -> Prices:
    """The table in `path`; ValueError naming the missing or wrong field."""
    raw: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    try:
        return Prices(
            source=str(raw["source"]),
            as_of=str(raw["as_of"]),
            currency=str(raw["currency"]),
            days_per_month=float(raw["days_per_month"]),
            per_1k_series_month=float(raw["metrics"]["per_1k_series_month"]),
            included_dpm_per_series=float(raw["metrics"]["included_dpm_per_series"]),
            logs_per_gb=float(raw["logs"]["per_gb"]),
            traces_per_gb=float(raw["traces"]["per_gb"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: missing or invalid price field {exc}") from None


def billable_series(volumes: Volumes, prices: Prices, scrape_interval_seconds: float) -> float:
    """max(active series, DPM / included DPM), the DPM taken at the deployment's scrape
    interval (the measured samples scaled from the measuring Prometheus's interval)."""
    scale = volumes.measured_scrape_interval_seconds / scrape_interval_seconds
    dpm = volumes.samples_per_second * 60 * scale
    return max(volumes.series, dpm / prices.included_dpm_per_series)


def gb_per_month(bytes_per_second: float, prices: Prices) -> float:
    return bytes_per_second * prices.seconds_per_month / GB


def monthly(volumes: Volumes, prices: Prices, scrape_interval_seconds: float) -> dict[str, float]:
    """Monthly cost per pillar and in total, in the table's currency."""
    series = billable_series(volumes, prices, scrape_interval_seconds)
    cost = {
        "metrics": series / 1000 * prices.per_1k_series_month,
        "logs": gb_per_month(volumes.log_bytes_per_second, prices) * prices.logs_per_gb,
        "traces": gb_per_month(volumes.span_bytes_per_second, prices) * prices.traces_per_gb,
    }
    cost["total"] = sum(cost[p] for p in PILLARS)
    return cost


def cut(before: float, after: float) -> float:
    """The share removed, 0..1 (0 when there was nothing to cut)."""
    return 0.0 if before <= 0 else 1 - after / before
