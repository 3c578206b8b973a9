"""Prometheus metrics created from the telemetry contract, one registry per service.

Code asks for a metric by its contract name; a name the contract does not declare fails at
startup, so nothing undeclared can be emitted. Exposition is OpenMetrics when the scraper
asks for it (Prometheus does), which is the only format that carries exemplars.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from opentelemetry import trace
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

from servescope.telemetry.contract import Contract, MetricSpec, load_contract


def current_exemplar() -> dict[str, str] | None:
    """Trace and span id of the active span, for exemplars; None unless the trace is sampled.

    An exemplar must lead to a trace the backend has, so unsampled traces give none.
    """
    context = trace.get_current_span().get_span_context()
    if not context.trace_flags.sampled:
        return None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


class ServiceMetrics:
    """The metrics one service exposes, exactly as the contract declares them."""

    def __init__(self, service: str, contract: Contract | None = None) -> None:
        self.service = service
        self.contract = contract or load_contract()
        # `_created` series double the series count for no question anyone asks here.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._metrics: dict[str, Any] = {}
        self._class_labels: set[str] = set()
        for spec in self.contract.for_service(service):
            if not spec.runtime:
                self._metrics[spec.name] = self._create(spec)

    def _create(self, spec: MetricSpec) -> Any:
        kwargs: dict[str, Any] = {
            "documentation": spec.help,
            "labelnames": spec.labels,
            "registry": self.registry,
        }
        if spec.type == "counter":
            return Counter(spec.name.removesuffix("_total"), **kwargs)
        if spec.type == "gauge":
            return Gauge(spec.name, **kwargs)
        return Histogram(spec.name, buckets=spec.buckets, **kwargs)

    def _get(self, name: str, kind: type) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            spec = self.contract.metric(name)  # raises KeyError when undeclared
            raise KeyError(
                f"metric {name} is declared for {list(spec.services)}, not {self.service}"
            )
        if not isinstance(metric, kind):
            raise TypeError(f"metric {name} is a {type(metric).__name__}, not a {kind.__name__}")
        return metric

    def histogram(self, name: str) -> Histogram:
        metric: Histogram = self._get(name, Histogram)
        return metric

    def counter(self, name: str) -> Counter:
        metric: Counter = self._get(name, Counter)
        return metric

    def gauge(self, name: str) -> Gauge:
        metric: Gauge = self._get(name, Gauge)
        return metric

    def class_label(self, label: str) -> str:
        """A predicted class as a label value, with the number of distinct values capped."""
        if label in self._class_labels:
            return label
        rule = self.contract.label_rules["class_label"]
        if len(self._class_labels) >= self.contract.max_class_labels or not rule.allows(label):
            return "other"
        self._class_labels.add(label)
        return label

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def observe(histogram: Any, value: float) -> None:
    """Observe with the current trace as exemplar when that trace is sampled."""
    exemplar = current_exemplar()
    if exemplar is None:
        histogram.observe(value)
    else:
        histogram.observe(value, exemplar)


def add_metrics_route(app: FastAPI, metrics: ServiceMetrics) -> None:
    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)
