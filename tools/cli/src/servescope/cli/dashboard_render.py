"""Pictures of the dashboards without Grafana: evaluate every panel's queries against a
running Prometheus and draw the dashboard's grid with matplotlib.

This is not Grafana's look, but it is the same queries on the same layout, so the pictures
in docs/dashboards/ show what each dashboard holds, with real data.

Logs panels read Loki, which only runs in Kubernetes mode. Given the folder where local mode
writes the services' logs (`<service>.log`, JSON lines), the renderer lists the newest lines
that a small subset of the panel's LogQL selects (label matchers on app, container and
level; `| json` label filters), with their trace ids; without it, it says where the lines
come from.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from servescope.cli.paths import repo_root
from servescope.dashboards import DASHBOARDS, OUTPUT_DIR

# Template variables as the pictures use them: every service, the Kubernetes namespace.
VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "service": ".*",
    "namespace": "servescope",
    "container": ".*",
}
COLORS = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9",
          "#705da0", "#508642", "#cca300", "#447ebc", "#c15c17"]  # fmt: skip
NAMED = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a",
         "dark-red": "#c4162a", "blue": "#5794f2"}  # fmt: skip
BACKGROUND, PANEL, TEXT = "#111217", "#181b1f", "#ccccdc"


def substitute(expr: str, variables: dict[str, str] | None = None) -> str:
    values = variables or VARIABLES
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m[1] or m[2]], expr)


def _api(url: str, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=30) as response:  # noqa: S310
        body: dict[str, Any] = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{params.get('query')}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _legend(template: str, metric: dict[str, str]) -> str:
    if not template:
        return ",".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m[1], ""), template).strip()


def format_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "NaN"
    if unit == "s":
        if value == 0:
            return "0 s"
        return f"{value * 1000:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "bytes":
        for suffix, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(value) >= size:
                return f"{value / size:.3g} {suffix}"
        return f"{value:.0f} B"
    if unit in ("reqps", "ops", "cps"):
        return f"{value:.3g}/s"
    if unit.startswith("suffix:"):
        return f"{value:.3g}{unit.removeprefix('suffix:')}"
    return f"{value:.4g}"


def _threshold_color(panel: dict[str, Any], value: float) -> str:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    color = "green"
    for step in steps:
        if step["value"] is None or (not math.isnan(value) and value >= step["value"]):
            color = step["color"]
    return NAMED.get(color, color)


def _no_data(panel: dict[str, Any]) -> str:
    text = json.dumps(panel["targets"])
    kubernetes = "kube_" in text or "container_" in text
    return (
        "No data (Kubernetes mode only: kube-state-metrics, cAdvisor)" if kubernetes else "No data"
    )


# LogQL stream labels (deploy/stack/fluent-bit.yaml) -> the field of a local JSON line.
LOG_LABELS = {"app": "service", "container": "service", "level": "level"}
LOG_SERVICES = ("preprocess", "classifier", "postprocess")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def log_filter(expr: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate on parsed log lines for a small LogQL subset: `{label op "value", ...}`
    then `| json` and label filters `| field op "value"`. Labels with no local counterpart
    (namespace) match everything; regular expressions are anchored, as in LogQL."""
    selector, _, pipeline = substitute(expr).partition("}")
    checks: list[tuple[str, str, str]] = []
    for name, op, value in _MATCHER.findall(selector):
        if name in LOG_LABELS:
            checks.append((LOG_LABELS[name], op, value))
    checks.extend(_MATCHER.findall(pipeline))

    def keep(record: dict[str, Any]) -> bool:
        for field, op, value in checks:
            actual = str(record.get(field, ""))
            if (op == "=" and actual != value) or (op == "!=" and actual == value):
                return False
            if op in ("=~", "!~") and bool(re.fullmatch(value, actual)) != (op == "=~"):
                return False
        return True

    return keep


def read_log_lines(logs_dir: Path, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    """The services' JSON lines in logs_dir between start and end that expr selects, oldest
    first."""
    from datetime import datetime

    keep = log_filter(expr)
    found = []
    for name in LOG_SERVICES:
        path = logs_dir / f"{name}.log"
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                stamp = datetime.fromisoformat(record["timestamp"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            if start <= stamp <= end and keep(record):
                record["_time"] = stamp
                found.append(record)
    return sorted(found, key=lambda r: r["_time"])


class Renderer:
    def __init__(
        self,
        url: str,
        minutes: float = 10.0,
        end: float | None = None,
        logs_dir: Path | None = None,
    ) -> None:
        self.url = url
        self.end = end or time.time()
        self.start = self.end - minutes * 60
        self.step = max(1.0, minutes * 60 / 150)
        self.logs_dir = logs_dir

    def range(self, expr: str) -> list[dict[str, Any]]:
        return _api(
            self.url,
            "query_range",
            {
                "query": substitute(expr),
                "start": f"{self.start:.3f}",
                "end": f"{self.end:.3f}",
                "step": f"{self.step:g}",
            },
        )

    def instant(self, expr: str) -> list[dict[str, Any]]:
        return _api(self.url, "query", {"query": substitute(expr), "time": f"{self.end:.3f}"})

    def draw(self, board: dict[str, Any], out: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = list(board["panels"])
        rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
        col, unit = 0.75, 0.32  # inches per grid column and per grid row unit
        header = 0.7
        width, height = 24 * col, rows * unit + header
        fig = plt.figure(figsize=(width, height), dpi=80, facecolor=BACKGROUND)
        fig.text(0.01, 1 - 0.35 / height, board["title"], color=TEXT, fontsize=18, va="center")
        fig.text(
            0.99, 1 - 0.35 / height, "rendered from live data by servescope's dashboard renderer",
            color="#8e8e8e", fontsize=9, va="center", ha="right",
        )  # fmt: skip
        for panel in panels:
            g = panel["gridPos"]
            pad = 0.06
            x0, top = g["x"] * col + pad, header + g["y"] * unit + pad
            cell_w, cell_h = g["w"] * col - 2 * pad, g["h"] * unit - 2 * pad
            if panel["type"] == "row":
                fig.text(x0 / width, 1 - (top + cell_h / 2) / height, panel["title"],
                         color=TEXT, fontsize=13, weight="bold", va="center")  # fmt: skip
                continue
            frame = fig.add_axes(
                (x0 / width, 1 - (top + cell_h) / height, cell_w / width, cell_h / height)
            )
            frame.set_facecolor(PANEL)
            frame.set_xticks([])
            frame.set_yticks([])
            for spine in frame.spines.values():
                spine.set_color("#2c3235")
            fig.text((x0 + 0.08) / width, 1 - (top + 0.17) / height, panel["title"],
                     color=TEXT, fontsize=10, va="center")  # fmt: skip
            # Room inside the cell for the title and, on charts, the tick labels.
            charts = panel["type"] in ("timeseries", "heatmap")
            left = 0.75 if charts else (1.6 if panel["type"] == "bargauge" else 0.1)
            bottom = 0.3 if charts else 0.1
            ax = fig.add_axes(
                (
                    (x0 + left) / width,
                    1 - (top + cell_h - bottom) / height,
                    (cell_w - left - 0.15) / width,
                    (cell_h - 0.38 - bottom) / height,
                ),
                facecolor=PANEL,
            )
            for spine in ax.spines.values():
                spine.set_color("#2c3235")
            ax.tick_params(colors="#9fa7b3", labelsize=7)
            try:
                getattr(self, f"_{panel['type']}")(ax, panel)
            except RuntimeError as exc:  # a query Prometheus refused: show it, do not hide it
                self._message(ax, f"query error: {exc}"[:120])
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, facecolor=BACKGROUND)
        plt.close(fig)

    @staticmethod
    def _message(ax: Any, text: str) -> None:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, text, color="#8e8e8e", ha="center", va="center",
                transform=ax.transAxes, fontsize=9, wrap=True)  # fmt: skip

    def _time_axis(self, ax: Any) -> None:
        ticks = [self.start + i * (self.end - self.start) / 4 for i in range(5)]
        ax.set_xticks(ticks)
        ax.set_xticklabels([time.strftime("%H:%M", time.localtime(t)) for t in ticks])
        ax.set_xlim(self.start, self.end)

    def _timeseries(self, ax: Any, panel: dict[str, Any]) -> None:
        unit = panel["fieldConfig"]["defaults"]["unit"]
        custom = panel["fieldConfig"]["defaults"].get("custom", {})
        stacked = custom.get("stacking", {}).get("mode") == "normal"
        lines = []
        for target in panel["targets"]:
            for series in self.range(target["expr"]):
                points = [(float(t), float(v)) for t, v in series["values"]]
                lines.append((_legend(target.get("legendFormat", ""), series["metric"]), points))
        if not lines:
            self._message(ax, _no_data(panel))
            return
        lines.sort(key=lambda item: item[0])
        if stacked:
            import numpy as np

            grid = np.arange(self.start, self.end + self.step, self.step)
            base = np.zeros(len(grid))
            for index, (label, points) in enumerate(lines[:12]):
                values = np.interp(grid, [t for t, _ in points], [v for _, v in points],
                                   left=0, right=0)  # fmt: skip
                values = np.nan_to_num(values)
                ax.fill_between(grid, base, base + values, color=COLORS[index % 12], alpha=0.6,
                                label=label, linewidth=0)  # fmt: skip
                base = base + values
        else:
            for index, (label, points) in enumerate(lines[:12]):
                ax.plot([t for t, _ in points], [v for _, v in points], label=label,
                        color=COLORS[index % 12], linewidth=1.2)  # fmt: skip
        peak = max((v for _, points in lines for _, v in points if not math.isnan(v)), default=0)
        if custom.get("thresholdsStyle", {}).get("mode") == "dashed":
            for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]:
                # A threshold far above the data would flatten it; Grafana users zoom, a
                # picture cannot, so such lines are left out.
                if step["value"] is not None and (peak == 0 or step["value"] <= 3 * peak):
                    ax.axhline(step["value"], color=NAMED.get(step["color"], step["color"]),
                               linestyle="--", linewidth=1)  # fmt: skip
        self._time_axis(ax)
        from matplotlib.ticker import FuncFormatter

        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit)))
        ax.grid(color="#2c3235", linewidth=0.5)
        legend = ax.legend(fontsize=6, loc="upper left", ncol=3, framealpha=0.3,
                           labelcolor=TEXT, facecolor=PANEL, edgecolor="#2c3235")  # fmt: skip
        legend.get_frame().set_linewidth(0.5)

    def _stat(self, ax: Any, panel: dict[str, Any]) -> None:
        from matplotlib.patches import Rectangle

        unit = panel["fieldConfig"]["defaults"]["unit"]
        mappings = {}
        for mapping in panel["fieldConfig"]["defaults"].get("mappings", []):
            mappings.update({k: v["text"] for k, v in mapping["options"].items()})
        values = []
        for target in panel["targets"]:
            for series in self.instant(target["expr"]):
                value = float(series["value"][1])
                text = mappings.get(f"{value:g}", format_value(value, unit))
                values.append(
                    (_legend(target.get("legendFormat", ""), series["metric"]), value, text)
                )
        ax.set_xticks([])
        ax.set_yticks([])
        if not values:
            self._message(ax, _no_data(panel))
            return
        n = len(values)
        for index, (label, value, text) in enumerate(sorted(values)):
            x0 = index / n
            ax.add_patch(Rectangle(
                (x0 + 0.01, 0.05), 1 / n - 0.02, 0.8, transform=ax.transAxes,
                color=_threshold_color(panel, value)))  # fmt: skip
            ax.text(x0 + 0.5 / n, 0.5, text, color="white", fontsize=16 if n < 3 else 12,
                    ha="center", va="center", transform=ax.transAxes, weight="bold")  # fmt: skip
            ax.text(x0 + 0.5 / n, 0.15, label, color="white", fontsize=7, ha="center",
                    va="center", transform=ax.transAxes)  # fmt: skip

    def _bargauge(self, ax: Any, panel: dict[str, Any]) -> None:
        unit = panel["fieldConfig"]["defaults"]["unit"]
        bars = []
        for target in panel["targets"]:
            for series in self.instant(target["expr"]):
                value = float(series["value"][1])
                bars.append((_legend(target.get("legendFormat", ""), series["metric"]), value))
        if not bars:
            self._message(ax, "No data")
            return
        bars = bars[:15]
        labels = [label for label, _ in bars][::-1]
        values = [0.0 if math.isnan(v) else v for _, v in bars][::-1]
        ax.barh(labels, values, color=[_threshold_color(panel, v) for v in values])
        top = panel["fieldConfig"]["defaults"].get("max") or max([*values, 1e-9]) * 1.25
        ax.set_xlim(0, top)
        for index, value in enumerate(values):
            ax.text(value, index, " " + format_value(value, unit), color=TEXT, fontsize=7,
                    va="center")  # fmt: skip
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xticks([])

    def _heatmap(self, ax: Any, panel: dict[str, Any]) -> None:
        import numpy as np

        unit = panel["fieldConfig"]["defaults"]["unit"]
        series = self.range(panel["targets"][0]["expr"])
        if not series:
            self._message(ax, "No data")
            return
        grid = np.arange(self.start, self.end + self.step / 2, self.step)
        bounds = sorted(series, key=lambda s: float(s["metric"]["le"]))
        cumulative = np.array([
            np.interp(grid, [float(t) for t, _ in s["values"]], [float(v) for _, v in s["values"]],
                      left=np.nan, right=np.nan)
            for s in bounds
        ])  # fmt: skip
        counts = np.diff(np.vstack([np.zeros(len(grid)), np.nan_to_num(cumulative)]), axis=0)
        counts[counts < 0] = 0
        # Leave out the empty buckets above and below the data, as Grafana's y axis does.
        used = np.nonzero(counts.sum(axis=1) > 0)[0]
        low, high = (used[0], used[-1] + 1) if len(used) else (0, len(bounds))
        ax.imshow(counts[low:high], aspect="auto", origin="lower", cmap="inferno",
                  extent=(self.start, self.end, 0, high - low), interpolation="nearest")  # fmt: skip
        labels = []
        for s in bounds[low:high]:
            le = float(s["metric"]["le"])
            labels.append("+Inf" if math.isinf(le) else format_value(le, unit))
        ax.set_yticks([i + 0.5 for i in range(high - low)])
        ax.set_yticklabels([f"≤ {label}" for label in labels])
        self._time_axis(ax)

    def _logs(self, ax: Any, panel: dict[str, Any]) -> None:
        """The newest lines first, as Grafana's logs panel sorts them, trace ids in blue."""
        ax.set_xticks([])
        ax.set_yticks([])
        if self.logs_dir is None:
            self._message(
                ax, "Log lines come from Loki (Kubernetes mode); trace ids link to Jaeger"
            )
            return
        records = read_log_lines(self.logs_dir, panel["targets"][0]["expr"], self.start, self.end)
        if not records:
            self._message(ax, "No data")
            return
        height = ax.get_position().height * ax.figure.get_figheight()
        shown = max(1, int(height / 0.19))
        ax.set_xlim(0, 1)
        ax.set_ylim(shown, 0)
        for row, record in enumerate(reversed(records[-shown:])):
            stamp = time.strftime("%H:%M:%S", time.localtime(record["_time"]))
            level = str(record.get("level", ""))
            color = {"warning": NAMED["orange"], "error": NAMED["red"]}.get(level, TEXT)
            details = " ".join(
                f"{key}={record[key]}"
                for key in ("http_route", "http_response_status_code", "kind", "stage")
                if key in record
            )
            ax.text(0.005, row + 0.5, f"{stamp}  {level:<7} {record.get('service', ''):<11} "
                    f"{record.get('event', '')} {details}"[:110], color=color, fontsize=8,
                    family="monospace", va="center")  # fmt: skip
            if "trace_id" in record:
                ax.text(0.995, row + 0.5, f"trace_id={record['trace_id']}", color=NAMED["blue"],
                        fontsize=8, family="monospace", va="center", ha="right")  # fmt: skip

    def _table(self, ax: Any, panel: dict[str, Any]) -> None:
        rows: list[dict[str, str]] = []
        for target in panel["targets"]:
            rows.extend(series["metric"] for series in self.instant(target["expr"]))
        ax.set_xticks([])
        ax.set_yticks([])
        if not rows:
            self._message(ax, "No data")
            return
        columns = sorted({k for row in rows for k in row if k != "__name__"})
        cells = [[str(row.get(c, ""))[:20] + ("…" if len(str(row.get(c, ""))) > 20 else "")
                  for c in columns] for row in rows]  # fmt: skip
        table = ax.table(cellText=cells, colLabels=columns, loc="center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        for cell in table.get_celld().values():
            cell.set_facecolor(PANEL)
            cell.set_edgecolor("#2c3235")
            cell.get_text().set_color(TEXT)


def render_all(
    url: str, out_dir: Path, minutes: float = 10.0, logs_dir: Path | None = None
) -> list[Path]:
    """docs/dashboards/<name>.png for every dashboard, from the data in the Prometheus at url
    (and the services' log files in logs_dir, for logs panels)."""
    renderer = Renderer(url, minutes, logs_dir=logs_dir)
    written = []
    for name in DASHBOARDS:
        board = json.loads((repo_root() / OUTPUT_DIR / f"{name}.json").read_text())
        path = out_dir / f"{name}.png"
        renderer.draw(board, path)
        written.append(path)
    return written


def capture_local(out_dir: Path, seconds: float = 240.0, run_dir: Path | None = None) -> list[Path]:
    """Start the services and a Prometheus (2 s scrapes, the repository's rules), send mixed
    traffic and then a drift mix, render every dashboard, and stop everything started.

    Where cgroups are writable the services run with limits, supervised and exported as
    `servescope up --limit` runs them, so the Pods dashboard shows real container series."""
    import asyncio
    import tempfile

    from servescope.cli.local.cgroups import Limits
    from servescope.cli.local.containers import ContainerRuntime
    from servescope.cli.local.services import (
        SERVICES,
        LocalStack,
        PrometheusProcess,
        free_port,
        prometheus_config,
    )
    from servescope.cli.paths import heldout_dir
    from servescope.loadgen.traffic import LoadConfig, run_load

    base = run_dir or Path(tempfile.mkdtemp(prefix="servescope-render-"))
    stack = LocalStack(ports={name: free_port() for name in SERVICES}, run_dir=base)
    mib = 1 << 20
    runtime = ContainerRuntime(
        stack.services,
        limits={
            "preprocess": Limits(128 * mib, 300),
            "classifier": Limits(128 * mib, 500),
            "postprocess": Limits(96 * mib, 200),
        },
        say=lambda _: None,
    )
    runtime.prepare()
    try:
        stack.start()
    except BaseException:
        runtime.close()
        raise
    runtime.start(exporter_port=0)
    port = free_port()
    prometheus = PrometheusProcess(
        port,
        base / "prometheus",
        prometheus_config(
            stack.ports,
            port,
            "2s",
            exporter_port=runtime.exporter.port if runtime.exporter else None,
        ),
    )
    try:
        prometheus.start()
        prometheus.wait_for_targets()
        mixed = LoadConfig(
            heldout_dir=heldout_dir(),
            url=stack.url,
            rate=20,
            duration=seconds * 0.7,
            mix="mixed",
            bad_fraction=0.1,
        )
        asyncio.run(run_load(mixed, progress=None))
        drift = LoadConfig(
            heldout_dir=heldout_dir(), url=stack.url, rate=20, duration=seconds * 0.3, mix="drift"
        )
        asyncio.run(run_load(drift, progress=None))
        time.sleep(6)
        return render_all(prometheus.url, out_dir, minutes=seconds / 60 + 0.5, logs_dir=base)
    finally:
        prometheus.stop()
        runtime.stop_supervising()
        stack.stop()
        runtime.close()
