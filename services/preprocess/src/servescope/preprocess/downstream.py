"""Calls to the classifier and postprocess services over one shared, pooled HTTP client.

aiohttp rather than httpx: measured here, httpx spent 4-5x the CPU per call, and the
inter-service client is the largest cost on the request path. Every call has a total
timeout; failures map to a status and a bounded kind that name the failing stage:
unreachable -> 503 `<stage>_unavailable`, too slow -> 504 `<stage>_timeout`, a bad answer
-> 502 `<stage>_error`. A caller that knows what a 404 means (the classifier does not serve
that model) passes the error to raise instead.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from yarl import URL

from servescope.runtime.errors import ServiceError
from servescope.telemetry.tracing import start_step


@dataclass(frozen=True)
class Endpoint:
    stage: str  # "classifier" or "postprocess": the name used in error bodies and metrics
    base_url: str
    timeout: aiohttp.ClientTimeout

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    @functools.cached_property  # parsed once, not on every traced call
    def host(self) -> str:
        return URL(self.base_url).host or ""

    @functools.cached_property
    def port(self) -> int:
        return URL(self.base_url).port or 80


def _json_dumps(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def new_session(max_connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=max_connections, limit_per_host=max_connections, keepalive_timeout=30
    )
    return aiohttp.ClientSession(connector=connector, json_serialize=_json_dumps)


def _downstream_message(body: bytes) -> str:
    """The downstream's own error text, if it sent an OIP-style one (truncated)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    message = parsed.get("error") if isinstance(parsed, dict) else None
    return str(message)[:300] if message else ""


# Called with (outcome, seconds) after every call: ok, unavailable, timeout or error.
Recorder = Callable[[str, float], None]


async def call(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    method: str,
    path: str,
    payload: Any = None,
    record: Recorder | None = None,
    not_found: ServiceError | None = None,
) -> Any:
    """One JSON call with the endpoint's timeout; returns the decoded JSON answer.

    Made inside a CLIENT span, whose context the request carries as `traceparent`. With
    `not_found`, a 404 answer raises it (counted as outcome `error`: the peer said no).
    """
    started = time.perf_counter()
    url = endpoint.url(path)
    current = trace.get_current_span()
    # Unsampled traces skip the client span and propagate the server span's context as is.
    scope: AbstractContextManager[trace.Span] = (
        start_step(
            method,
            SpanKind.CLIENT,
            {
                "http.request.method": method,
                "url.full": url,
                "server.address": endpoint.host,
                "server.port": endpoint.port,
                "peer.service": endpoint.stage,
            },
            record_errors=False,  # set below, from the failure's kind
        )
        if current.is_recording()
        else nullcontext(current)
    )
    with scope as span:
        try:
            answer = await _call(session, endpoint, method, url, payload, not_found)
        except ServiceError as exc:
            prefix = f"{endpoint.stage}_"
            outcome = exc.kind.removeprefix(prefix) if exc.kind.startswith(prefix) else "error"
            if record is not None:
                record(outcome, time.perf_counter() - started)
            span.set_attribute("error.type", exc.kind)
            span.set_status(Status(StatusCode.ERROR, exc.message))
            raise
        if record is not None:
            record("ok", time.perf_counter() - started)
        return answer


async def _call(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    method: str,
    url: str,
    payload: Any,
    not_found: ServiceError | None = None,
) -> Any:
    headers: dict[str, str] = {}
    propagate.inject(headers)  # W3C traceparent: the downstream joins the caller's trace
    # The calls are pure functions of their input, so one retry on a pooled connection the
    # peer had already closed (a restart, an idle timeout) is safe and hides that race.
    for attempt in (1, 2):
        try:
            async with session.request(
                method, url, json=payload, headers=headers, timeout=endpoint.timeout
            ) as response:
                body = await response.read()
                status = response.status
            break
        except aiohttp.ClientConnectorError as exc:
            raise _failure(
                endpoint, 503, "unavailable", f"is unreachable ({exc.os_error})"
            ) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            # Closed or reset (ECONNRESET) by a peer that is shutting down or restarting.
            if attempt == 2:
                # Twice: the peer is going away (a crash, a restart), not answering badly.
                # 503 tells the caller to retry, as for a peer that refuses connections.
                raise _failure(
                    endpoint, 503, "unavailable", "closed the connection mid-call"
                ) from exc
        except TimeoutError as exc:
            raise _failure(
                endpoint, 504, "timeout", f"did not answer within {endpoint.timeout.total} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise _failure(endpoint, 502, "error", f"call failed: {type(exc).__name__}") from exc
    if status == 503:
        raise _failure(endpoint, 503, "unavailable", "is not ready")
    if status == 404 and not_found is not None:
        raise not_found
    if status >= 400:
        detail = _downstream_message(body)
        raise _failure(
            endpoint, 502, "error", f"answered {status}" + (f": {detail}" if detail else "")
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _failure(endpoint, 502, "error", "answered with a body that is not JSON") from exc


def _failure(endpoint: Endpoint, status: int, outcome: str, message: str) -> ServiceError:
    return ServiceError(
        status, f"{endpoint.stage}_{outcome}", f"{endpoint.stage} {message}", stage=endpoint.stage
    )
