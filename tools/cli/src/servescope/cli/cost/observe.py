"""What one run sends, read from where it really goes: Prometheus's own TSDB and scrape
metrics, the services' log files, and the OTLP spans they export.

- Metrics: the TSDB status API (head series, top series by metric name and by label) and
  the scrape and rule-evaluation metrics Prometheus makes about itself.
- Logs: local mode writes each service's JSON lines to `<run dir>/<service>.log`; a
  `LogWindow` counts the lines and bytes written between two moments, by level.
- Spans: `SpanCounter` is a small OTLP/HTTP receiver in this process; the services export to
  it (as they would to a collector) and it counts the spans and the bytes received.
"""

from __future__ import annotations

import gzip
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from servescope.cli.relabel import relabel

LEVELS = ("debug", "info", "warning", "error", "critical")
KEPT_ALWAYS = ("warning", "error", "critical")  # the levels no sampling may drop
OWN_JOB = "prometheus"  # Prometheus's own series: shown, not billed (a backend replaces it)


class PrometheusAPI:
    """The few HTTP API calls the cost run makes."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=30) as response:  # noqa: S310
                body: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422: the query's own error, in the body
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self._get("/api/v1/query", {"query": expr})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float:
        """The single value of an expression; 0 when it returns nothing."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def by(self, label: str, expr: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def series(self, selector: str) -> list[dict[str, str]]:
        """The label sets of every series the selector matches now."""
        found: list[dict[str, str]] = self._get("/api/v1/series", {"match[]": selector})
        return found

    def tsdb_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self._get("/api/v1/status/tsdb")
        return status


def _pairs(items: list[dict[str, Any]]) -> list[list[Any]]:
    return [[item["name"], int(item["value"])] for item in items]


def metrics_snapshot(
    api: PrometheusAPI,
    window_seconds: float,
    scrape_seconds: float,
    write_rules: list[dict[str, Any]],
) -> dict[str, Any]:
    """Series and samples now (samples per second over the last `window_seconds`).

    Billed: what a managed backend would receive by remote write: every series but
    Prometheus's own (job="prometheus") -- the services' series, their recording rules' and
    the container series -- less what `write_rules` (the remote write's relabeling) drops.
    Samples per second billed: what the scrapes keep per scrape over the interval, plus what
    the rules write per evaluation (both intervals equal in local mode), in the same share.
    """
    window = f"{max(round(window_seconds), 2 * round(scrape_seconds))}s"
    not_own = f'job!="{OWN_JOB}"'
    scraped = api.by("job", "sum by (job) (scrape_samples_scraped)")
    kept = api.by("job", "sum by (job) (scrape_samples_post_metric_relabeling)")
    rule_samples = api.value("sum(prometheus_rule_group_last_evaluation_samples)")
    stored = api.series(f'{{__name__=~".+", {not_own}}}')
    written = [s for s in stored if relabel(s, write_rules) is not None]
    share = len(written) / len(stored) if stored else 0.0
    billed_scrape = sum(v for job, v in kept.items() if job != OWN_JOB)
    status = api.tsdb_status()
    by_model = api.by("model_name", 'count by (model_name) ({model_name!=""})')
    head_series = api.value("prometheus_tsdb_head_series")
    rss = api.value(f'process_resident_memory_bytes{{job="{OWN_JOB}"}}')
    return {
        "head_series": head_series,
        "stored_series": len(stored),
        "billed_series": len(written),
        "samples_appended_per_second": api.value(
            f"rate(prometheus_tsdb_head_samples_appended_total[{window}])"
        ),
        "billed_samples_per_second": share * (billed_scrape + rule_samples) / scrape_seconds,
        "scrape_interval_seconds": scrape_seconds,
        "rule_series": api.value('count({__name__=~".+:.+"})'),
        "rule_samples_per_evaluation": rule_samples,
        "jobs": {
            job: {"scraped": scraped.get(job, 0.0), "kept": kept.get(job, 0.0)}
            for job in sorted(set(scraped) | set(kept))
        },
        "top_metrics": [
            [r["metric"].get("__name__", ""), int(float(r["value"][1]))]
            for r in sorted(
                api.query(f'topk(10, count by (__name__) ({{__name__=~".+", {not_own}}}))'),
                key=lambda r: -float(r["value"][1]),
            )
        ],
        "top_label_pairs": _pairs(status.get("seriesCountByLabelValuePair", [])),
        "top_labels_by_values": _pairs(status.get("labelValueCountByLabelName", [])),
        "models_with_series": len(by_model),
        "series_per_model": sum(by_model.values()) / len(by_model) if by_model else 0.0,
        "model_series": sum(by_model.values()),
        "prometheus_rss_bytes": rss,
        "bytes_per_head_series": rss / head_series if head_series else 0.0,
    }


@dataclass
class LogWindow:
    """Lines the services write to their log files between start() and lines()."""

    paths: list[Path]
    offsets: dict[Path, int] = field(default_factory=dict)

    def start(self) -> None:
        self.offsets = {p: p.stat().st_size if p.exists() else 0 for p in self.paths}

    def lines(self) -> list[bytes]:
        """Whole lines written since start() (a line cut by either moment is left out)."""
        found: list[bytes] = []
        for path in self.paths:
            offset = self.offsets.get(path, 0)
            with path.open("rb") as handle:
                if offset:
                    handle.seek(offset - 1)
                    if handle.read(1) != b"\n":
                        handle.readline()  # the rest of a line begun before start()
                chunk = handle.read()
            found += chunk[: chunk.rfind(b"\n") + 1].splitlines(keepends=True)
        return found


def level_of(line: bytes) -> str:
    try:
        level = json.loads(line).get("level", "other")
    except (json.JSONDecodeError, AttributeError):
        return "other"
    return str(level) if level in LEVELS else "other"


def count_lines(lines: list[bytes]) -> dict[str, dict[str, int]]:
    """{level: {"lines": n, "bytes": b}} for the given lines, every level present."""
    counts: dict[str, dict[str, int]] = {level: {"lines": 0, "bytes": 0} for level in LEVELS}
    for line in lines:
        entry = counts.setdefault(level_of(line), {"lines": 0, "bytes": 0})
        entry["lines"] += 1
        entry["bytes"] += len(line)
    return counts


class _Receiver(BaseHTTPRequestHandler):
    counter: SpanCounter

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        size = len(body)
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.counter.add(request, size)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


class SpanCounter:
    """An OTLP/HTTP traces endpoint on 127.0.0.1 that counts what it receives."""

    def __init__(self) -> None:
        handler = type("Receiver", (_Receiver,), {"counter": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.lock = threading.Lock()
        self.spans: Counter[str] = Counter()
        self.bytes = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def env(self) -> dict[str, str]:
        """What a service needs to export to this receiver."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }

    def add(self, request: ExportTraceServiceRequest, size: int) -> None:
        found: Counter[str] = Counter()
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "unknown",
            )
            found[service] += sum(len(s.spans) for s in resource_spans.scope_spans)
        with self.lock:
            self.spans.update(found)
            self.bytes += size

    def snapshot(self) -> tuple[dict[str, int], int]:
        with self.lock:
            return dict(self.spans), self.bytes

    def __enter__(self) -> SpanCounter:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
