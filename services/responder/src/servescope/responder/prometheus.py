"""A small client for Prometheus's HTTP API: instant queries and exemplars.

Every call has a total timeout and runs in a CLIENT span (peer.service `prometheus`) when the
trace is sampled; a failure raises `QueryError` and is counted in
servescope_responder_prometheus_query_failures_total by API endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter
from yarl import URL

from servescope.telemetry.tracing import tracer

# The API endpoints used, as the values of the failures counter's `endpoint` label.
ENDPOINTS = {"/api/v1/query": "query", "/api/v1/query_exemplars": "query_exemplars"}


@dataclass
class Sample:
    """One series of an instant vector: its labels and value."""

    labels: dict[str, str]
    value: float


class QueryError(RuntimeError):
    """Prometheus did not answer, or answered with an error; the message says which."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind  # a bounded error.type: unavailable, timeout, error


class Prometheus:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        timeout: float,
        failures: Counter | None = None,
    ) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.failures = failures
        parsed = URL(self.url)
        self._host = parsed.host or ""
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)

    def _span(self, url: str) -> AbstractContextManager[trace.Span]:
        current = trace.get_current_span()
        if not current.is_recording():
            return nullcontext(current)
        return tracer().start_as_current_span(
            "GET",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "GET",
                "url.full": url,  # the query itself is in the parameters, left out
                "server.address": self._host,
                "server.port": self._port,
                "peer.service": "prometheus",
            },
            record_exception=False,
            set_status_on_exception=False,
        )

    async def _get(self, path: str, params: Mapping[str, str]) -> Any:
        url = self.url + path
        with self._span(url) as span:
            try:
                return await self._fetch(url, params, span)
            except QueryError as exc:
                if self.failures is not None:
                    self.failures.labels(ENDPOINTS[path]).inc()
                span.set_attribute("error.type", exc.kind)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                raise

    async def _fetch(self, url: str, params: Mapping[str, str], span: trace.Span) -> Any:
        try:
            async with self.session.get(url, params=params, timeout=self.timeout) as response:
                status = response.status
                raw = await response.read()
        except aiohttp.ClientConnectorError as exc:
            raise QueryError(f"{self.url} is unreachable ({exc.os_error})", "unavailable") from exc
        except TimeoutError as exc:
            raise QueryError(
                f"{self.url} did not answer within {self.timeout.total} s", "timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            raise QueryError(f"{self.url}: {type(exc).__name__}: {exc}", "error") from exc
        span.set_attribute("http.response.status_code", status)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise QueryError(
                f"{self.url} answered {status} with a body that is not JSON", "error"
            ) from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", body) if isinstance(body, dict) else body
            kind = body.get("errorType", "error") if isinstance(body, dict) else "error"
            raise QueryError(f"{kind}: {error}", "error")
        return body.get("data")

    async def query(self, promql: str, at: float) -> list[Sample]:
        """An instant query; an empty list unless the result is a vector."""
        data = await self._get("/api/v1/query", {"query": promql, "time": f"{at:.3f}"})
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            return []
        return [Sample(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]

    async def exemplars(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        """Every exemplar of the selected series in [start, end], flattened."""
        data = await self._get(
            "/api/v1/query_exemplars",
            {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}"},
        )
        found: list[dict[str, Any]] = []
        for series in data or []:
            for exemplar in series.get("exemplars") or []:
                found.append(
                    {
                        "series": dict(series.get("seriesLabels") or {}),
                        "labels": dict(exemplar.get("labels") or {}),
                        "value": float(exemplar["value"]),
                        "timestamp": float(exemplar["timestamp"]),
                    }
                )
        return found
