"""What every Servescope dashboard shares: the datasource variables, panel helpers, the
layout, the JSON encoding, and the one allow-list of series that do not come from the
services (Kubernetes and Prometheus's own).

Panels are built with Grafana's typed builders (grafana-foundation-sdk). Each helper takes
the unit and the description as required arguments, so a panel without them cannot be
written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import bargauge, heatmap, logs, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import loki as loki_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import loki as loki_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from servescope.telemetry.pipeline import PIPELINE

# The Prometheus datasource is the dashboard variable `datasource`; traces are found through
# the Jaeger datasource variable `jaeger` (exemplar links on latency panels, see
# deploy/local/grafana/provisioning/datasources/servescope.yaml for the Prometheus side of
# that link); log panels read the Loki datasource variable `loki`, whose derived field
# `trace_id` (same provisioning, and deploy/stack/kube-prometheus-stack.yaml) turns the
# trace id of each JSON line into a link to the trace in Jaeger.
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
JAEGER_UID = "${jaeger}"
LOKI = models.DataSourceRef(type_val="loki", uid="${loki}")

# The streams Fluent Bit ships to Loki (deploy/stack/fluent-bit.yaml): label `app` is the
# pod's app.kubernetes.io/name, which the app chart sets to the service's name (the same
# value as the Prometheus `job`), `namespace` the pod's namespace.
LOG_STREAMS = 'namespace="servescope"'
# Explore on the Jaeger datasource, showing the trace of the log line's trace_id field (the
# field the Loki datasource's derived field adds to every line that carries one).
TRACE_LINK = (
    "/explore?left=%7B%22datasource%22:%22" + JAEGER_UID + "%22,%22queries%22:%5B%7B"
    "%22refId%22:%22A%22,%22query%22:%22${__data.fields.trace_id}%22%7D%5D%7D"
)

# The services' jobs and the routes that are not traffic (probes, scrapes, admin), from the
# telemetry contract's pipeline section, as the recording rules use them.
SERVICES_RE = PIPELINE.job_regex
NOT_TRAFFIC = PIPELINE.probe_regex

# Series the dashboards read that the telemetry contract does not declare, because they
# come from Prometheus itself or from Kubernetes. A test allows exactly these besides the
# contract's metrics and the recording rules in deploy/prometheus/rules.
PROMETHEUS_SERIES: frozenset[str] = frozenset(
    {
        "up",
        "ALERTS",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "prometheus_tsdb_head_series",
        "prometheus_tsdb_head_samples_appended_total",
        "prometheus_target_interval_length_seconds",
    }
)
KUBERNETES_SERIES: frozenset[str] = frozenset(
    {
        # kubelet / cAdvisor
        "container_cpu_usage_seconds_total",
        "container_cpu_cfs_periods_total",
        "container_cpu_cfs_throttled_periods_total",
        "container_memory_working_set_bytes",
        "container_memory_rss",
        "container_memory_cache",
        "container_oom_events_total",
        # kube-state-metrics
        "kube_pod_container_info",
        "kube_pod_container_resource_requests",
        "kube_pod_container_resource_limits",
        "kube_pod_container_status_restarts_total",
        "kube_pod_container_status_last_terminated_reason",
        "kube_horizontalpodautoscaler_status_current_replicas",
        "kube_horizontalpodautoscaler_status_desired_replicas",
        "kube_horizontalpodautoscaler_spec_min_replicas",
        "kube_horizontalpodautoscaler_spec_max_replicas",
    }
)
EXTERNAL_SERIES: frozenset[str] = PROMETHEUS_SERIES | KUBERNETES_SERIES


@dataclass(frozen=True)
class Query:
    """One PromQL target. `instant` for tables and stats, `heatmap` for bucket series."""

    expr: str
    legend: str = ""
    exemplar: bool = False
    instant: bool = False
    heatmap: bool = False
    table: bool = False


LAST = common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def _target(query: Query, ref: str) -> prometheus_builders.Dataquery:
    target = prometheus_builders.Dataquery().expr(query.expr).ref_id(ref).datasource(DATASOURCE)
    if query.legend:
        target = target.legend_format(query.legend)
    if query.exemplar:
        target = target.exemplar(True)
    target = target.instant() if query.instant else target.range()
    if query.heatmap:
        target = target.format(prometheus_models.PromQueryFormat.HEATMAP)
    elif query.table:
        target = target.format(prometheus_models.PromQueryFormat.TABLE)
    return target


def _with_targets(panel: Any, queries: list[Query]) -> Any:
    for index, query in enumerate(queries):
        panel = panel.with_target(_target(query, chr(ord("A") + index)))
    return panel


def _framed(panel: Any, title: str, description: str, unit: str, width: int, height: int) -> Any:
    """What every metric panel has: title, description, unit, the datasource variable, size."""
    return (
        panel.title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(width)
        .height(height)
    )


def _bounded(panel: Any, minimum: float | None, maximum: float | None) -> Any:
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return panel


def _thresholds(steps: list[tuple[float | None, str]]) -> builders.ThresholdsConfig:
    return (
        builders.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    queries: list[Query],
    *,
    width: int = 12,
    height: int = 8,
    stack: bool = False,
    thresholds: list[tuple[float | None, str]] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> timeseries.Panel:
    panel = (
        _framed(timeseries.Panel(), title, description, unit, width, height)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    if stack:
        panel = panel.stacking(
            common_builders.StackingConfig().mode(common_models.StackingMode.NORMAL)
        ).fill_opacity(40)
    if thresholds:
        panel = panel.thresholds(_thresholds(thresholds)).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common_models.GraphTresholdsStyleMode.DASHED
            )
        )
    panel = _bounded(panel, minimum, maximum)
    result: timeseries.Panel = _with_targets(panel, queries)
    return result


def stat_panel(
    title: str,
    description: str,
    unit: str,
    queries: list[Query],
    *,
    width: int = 6,
    height: int = 4,
    thresholds: list[tuple[float | None, str]] | None = None,
    mappings: dict[str, str] | None = None,
) -> stat.Panel:
    panel = (
        _framed(stat.Panel(), title, description, unit, width, height)
        .color_mode(common_models.BigValueColorMode.BACKGROUND)
        .graph_mode(common_models.BigValueGraphMode.NONE)
        .reduce_options(LAST)
        .thresholds(_thresholds(thresholds or [(None, "green")]))
    )
    if mappings:
        panel = panel.mappings(
            [
                models.ValueMap(
                    options={
                        value: models.ValueMappingResult(text=text)
                        for value, text in mappings.items()
                    },
                )
            ]
        )
    result: stat.Panel = _with_targets(panel, queries)
    return result


def bargauge_panel(
    title: str,
    description: str,
    unit: str,
    queries: list[Query],
    *,
    width: int = 12,
    height: int = 8,
    thresholds: list[tuple[float | None, str]] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> bargauge.Panel:
    panel = (
        _framed(bargauge.Panel(), title, description, unit, width, height)
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .reduce_options(LAST)
        .thresholds(_thresholds(thresholds or [(None, "blue")]))
    )
    panel = _bounded(panel, minimum, maximum)
    result: bargauge.Panel = _with_targets(panel, queries)
    return result


def heatmap_panel(
    title: str,
    description: str,
    unit: str,
    queries: list[Query],
    *,
    width: int = 12,
    height: int = 8,
) -> heatmap.Panel:
    """Bucket series (format heatmap); `unit` is the unit of the buckets' upper bounds."""
    panel = (
        _framed(heatmap.Panel(), title, description, unit, width, height)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit(unit))
        .show_legend()
        .exemplars_color("rgba(255,0,255,0.7)")
    )
    result: heatmap.Panel = _with_targets(panel, queries)
    return result


def table_panel(
    title: str,
    description: str,
    unit: str,
    queries: list[Query],
    *,
    width: int = 12,
    height: int = 6,
) -> table.Panel:
    panel = _framed(table.Panel(), title, description, unit, width, height)
    result: table.Panel = _with_targets(panel, queries)
    return result


def logs_panel(
    title: str,
    description: str,
    expr: str,
    *,
    width: int = 24,
    height: int = 10,
    max_lines: int = 200,
) -> logs.Panel:
    """Log lines from Loki (a LogQL `expr` on the `loki` variable), newest first, with log
    details open to the trace link. Log lines have no unit: only the description is required."""
    target = (
        loki_builders.Dataquery()
        .expr(expr)
        .ref_id("A")
        .datasource(LOKI)
        .query_type("range")
        .max_lines(max_lines)
        .direction(loki_models.LokiQueryDirection.BACKWARD)
    )
    return (
        logs.Panel()
        .title(title)
        .description(description)
        .datasource(LOKI)
        .span(width)
        .height(height)
        .show_time(True)
        .show_labels(False)
        .show_common_labels(False)
        .wrap_log_message(False)
        .prettify_log_message(False)
        .enable_log_details(True)
        .dedup_strategy(common_models.LogsDedupStrategy.NONE)
        .sort_order(common_models.LogsSortOrder.DESCENDING)
        .data_links([builders.DashboardLink("Trace in Jaeger").url(TRACE_LINK).target_blank(True)])
        .with_target(target)
    )


def datasource_variable() -> builders.DatasourceVariable:
    return builders.DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def jaeger_variable() -> builders.DatasourceVariable:
    return builders.DatasourceVariable("jaeger").label("Jaeger").type("jaeger")


def loki_variable() -> builders.DatasourceVariable:
    return builders.DatasourceVariable("loki").label("Loki").type("loki")


def query_variable(name: str, label: str, query: str, *, include_all: bool = True) -> Any:
    variable = (
        builders.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(include_all)
    )
    if include_all:
        variable = variable.include_all(True).all_value(".*")
    return variable


def dashboard(
    uid: str,
    title: str,
    description: str,
    sections: list[tuple[str, list[Any]]],
    variables: list[Any] | None = None,
) -> builders.Dashboard:
    """A dashboard of rows, each a title and its panels, with the shared variables first
    (the Loki one only on dashboards with a logs panel)."""
    board = (
        builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["servescope"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .with_variable(jaeger_variable())
    )
    if any(isinstance(panel, logs.Panel) for _, panels in sections for panel in panels):
        board = board.with_variable(loki_variable())
    board = board.link(
        builders.DashboardLink("Servescope dashboards")
        .type(models.DashboardLinkType.DASHBOARDS)
        .tags(["servescope"])
        .as_dropdown(True)
    ).link(
        builders.DashboardLink("Traces in Jaeger")
        .type(models.DashboardLinkType.LINK)
        .url(f"/explore?left=%7B%22datasource%22:%22{JAEGER_UID}%22%7D")
        .target_blank(True)
        .icon("external link")
    )
    for variable in variables or []:
        board = board.with_variable(variable)
    for row, panels in sections:
        board = board.with_row(builders.Row(row))
        for panel in panels:
            board = board.with_panel(panel)
    return board


def to_json(board: builders.Dashboard) -> str:
    """Stable JSON: sorted keys, sequential panel ids, two-space indent, final newline."""
    data: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True).encode(board.build()))
    data.pop("id", None)
    for index, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = index
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def panels_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a dashboard's JSON, rows and the panels inside collapsed rows included."""
    found: list[dict[str, Any]] = []
    for panel in data.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found
