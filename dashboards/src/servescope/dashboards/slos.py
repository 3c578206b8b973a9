"""SLOs: objective, burn rate per window, error budget remaining and alert state, for every
SLO in deploy/prometheus/rules/slos.generated.yml (read at generation time, so a new SLO
spec gets its panels with `make generate`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders.dashboard import Dashboard

from servescope.dashboards.common import (
    Query,
    bargauge_panel,
    dashboard,
    stat_panel,
    timeseries_panel,
)

UID = "servescope-slos"
RULES = "deploy/prometheus/rules/slos.generated.yml"
SERVICE = "servescope"
# The multiwindow burn-rate thresholds of the generated alerts (SRE workbook, chapter 5).
BURN_THRESHOLDS = [
    (None, "green"),
    (1.0, "yellow"),
    (3.0, "orange"),
    (6.0, "red"),
    (14.4, "dark-red"),
]
WINDOW_ORDER = {"m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Slo:
    name: str
    objective: float
    windows: tuple[str, ...]
    alerts: tuple[str, ...]


def _seconds(window: str) -> int:
    return int(window[:-1]) * WINDOW_ORDER[window[-1]]


def load_slos(text: str) -> list[Slo]:
    """The SLOs of the generated rule file: name, objective, SLI windows and alert names."""
    data: dict[str, Any] = yaml.safe_load(text)
    objectives: dict[str, float] = {}
    windows: dict[str, set[str]] = {}
    alerts: dict[str, set[str]] = {}
    for group in data["groups"]:
        for rule in group["rules"]:
            labels = rule.get("labels", {})
            name = labels.get("sloth_slo")
            if "alert" in rule:
                slo = str(rule["expr"]).split('sloth_slo="', 1)[1].split('"', 1)[0]
                alerts.setdefault(slo, set()).add(rule["alert"])
                continue
            if name is None or labels.get("sloth_service") != SERVICE:
                continue
            record = rule["record"]
            if record == "slo:objective:ratio":
                objectives[name] = float(re.fullmatch(r"vector\((.+)\)", rule["expr"])[1])  # type: ignore[index]
            match = re.fullmatch(r"slo:sli_error:ratio_rate(\d+[mhd])", record)
            if match:
                windows.setdefault(name, set()).add(match[1])
    return [
        Slo(
            name,
            objectives[name],
            tuple(sorted(windows[name], key=_seconds)),
            tuple(sorted(alerts.get(name, ()))),
        )
        for name in sorted(objectives)
    ]


def _selector(slo: str) -> str:
    return f'sloth_service="{SERVICE}", sloth_slo="{slo}"'


def _slo_section(slo: Slo) -> tuple[str, list[Any]]:
    sel = _selector(slo.name)
    burn = [
        Query(
            f"slo:sli_error:ratio_rate{window}{{{sel}}}"
            " / on (sloth_id, sloth_slo, sloth_service) group_left "
            f"slo:error_budget:ratio{{{sel}}}",
            window,
        )
        for window in slo.windows
    ]
    alerts = ", ".join(slo.alerts) or "none"
    panels: list[Any] = [
        stat_panel(
            "Objective",
            f"The {slo.name} SLO's objective over its 30-day period (slo:objective:ratio).",
            "percentunit",
            [Query(f"max(slo:objective:ratio{{{sel}}})", slo.name)],
            width=4,
        ),
        stat_panel(
            "Error budget remaining (30d)",
            "Share of the 30-day error budget not yet spent "
            "(slo:period_error_budget_remaining:ratio); below 0 the SLO is broken.",
            "percentunit",
            [Query(f"max(slo:period_error_budget_remaining:ratio{{{sel}}})", slo.name)],
            width=5,
            thresholds=[(None, "red"), (0.25, "orange"), (0.5, "green")],
        ),
        stat_panel(
            "Burn rate now (5m)",
            "How fast the error budget burns right now (slo:current_burn_rate:ratio): 1 spends "
            "exactly the budget over 30 days, 14.4 spends 2% of it in an hour.",
            "suffix:x",
            [Query(f"max(slo:current_burn_rate:ratio{{{sel}}})", slo.name)],
            width=5,
            thresholds=BURN_THRESHOLDS,
        ),
        stat_panel(
            "Alert state",
            f"Whether the SLO's burn-rate alerts ({alerts}) are firing (2), pending (1) or "
            "quiet (0), from Prometheus's ALERTS series.",
            "none",
            [
                Query(
                    f'max(2 * ALERTS{{{sel}, alertstate="firing"}} '
                    f'or ALERTS{{{sel}, alertstate="pending"}} '
                    f"or 0 * slo:objective:ratio{{{sel}}})",
                    slo.name,
                )
            ],
            width=5,
            thresholds=[(None, "green"), (1, "orange"), (2, "red")],
            mappings={"0": "quiet", "1": "pending", "2": "firing"},
        ),
        bargauge_panel(
            "Burn rate per window (now)",
            "Error ratio over each SLI window divided by the error budget. The alerts page when "
            "both 5m and 1h (or 30m and 6h) pass 14.4 (or 6) and open a ticket when 2h and 1d "
            "(or 6h and 3d) pass 3 (or 1).",
            "suffix:x",
            burn,
            width=5,
            height=4,
            thresholds=BURN_THRESHOLDS,
            minimum=0,
        ),
        timeseries_panel(
            "Burn rate by window",
            "Error ratio over each SLI window divided by the error budget, over time; the "
            "dashed lines are the alert thresholds 1, 3, 6 and 14.4.",
            "suffix:x",
            burn,
            width=12,
            thresholds=BURN_THRESHOLDS,
            minimum=0,
        ),
        timeseries_panel(
            "Error budget remaining (30d) over time",
            "The 30-day error budget left, over time (slo:period_error_budget_remaining:ratio).",
            "percentunit",
            [Query(f"slo:period_error_budget_remaining:ratio{{{sel}}}", "budget remaining")],
            width=12,
            thresholds=[(None, "red"), (0, "green")],
        ),
    ]
    return f"SLO {slo.name} (objective {slo.objective:.4g})", panels


def build(root: Path) -> Dashboard:
    return dashboard(
        UID,
        "Servescope / SLOs",
        "Every Servescope SLO from deploy/prometheus/rules/slos.generated.yml: its objective, "
        "current burn rates per window, the 30-day error budget left and its alerts' state.",
        [_slo_section(slo) for slo in load_slos((root / RULES).read_text())],
    )
