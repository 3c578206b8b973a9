"""HTTP wiring of the alert responder: Alertmanager's webhook in, incident notes out.

POST /alerts takes Alertmanager's webhook payload (version 4) and hands each alert to the
Responder (servescope.responder.notes), which diagnoses it in the background; the answer says
how many alerts were accepted. GET /incidents lists the notes, GET /incidents/{incident_id}
returns one. /healthz, /readyz and /metrics, the access log, the server spans and the JSON
errors come from the shared runtime, as for every service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import aiohttp
import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servescope.responder.notes import Busy, Responder
from servescope.responder.settings import Settings
from servescope.runtime.auth import BearerToken
from servescope.runtime.bodies import read_body
from servescope.runtime.errors import ServiceError
from servescope.runtime.health import Health
from servescope.runtime.instrument import FASTAPI_TELEMETRY_OFF, instrument_app
from servescope.runtime.openapi import errors, request_body
from servescope.runtime.responses import JSONResponse
from servescope.telemetry.metrics import ServiceMetrics

log = structlog.get_logger()

# The `stage` of the webhook's error bodies.
STAGE = "webhook"


class _Alert(BaseModel):
    """One alert of the webhook, as far as the responder reads it; other fields pass."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)
    status: Literal["firing", "resolved"] | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    starts_at: str | None = Field(None, alias="startsAt")
    ends_at: str | None = Field(None, alias="endsAt")
    generator_url: str | None = Field(None, alias="generatorURL")
    fingerprint: str | None = None


class Webhook(BaseModel):
    """Alertmanager's webhook payload (version 4): checked here, declared in the OpenAPI."""

    model_config = ConfigDict(extra="allow", strict=True)
    version: str | None = None
    status: Literal["firing", "resolved"] | None = None
    receiver: str | None = None
    alerts: list[_Alert]


WEBHOOK_BODY = request_body(
    {"application/json": Webhook.model_json_schema(by_alias=True)},
    "Alertmanager's webhook payload, version 4.",
)


def parse_webhook(body: bytes) -> dict[str, Any]:
    """The payload, or a 400 that says what is wrong with it (never echoing the body)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ServiceError(400, "invalid_json", f"the body is not JSON: {exc}", STAGE) from exc
    try:
        Webhook.model_validate(payload)
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ServiceError(
            400,
            "invalid_request",
            f"expected an Alertmanager webhook payload (version 4): {where}",
            STAGE,
        ) from exc
    result: dict[str, Any] = payload
    return result


def create_app(settings: Settings, health: Health) -> FastAPI:
    health.require("incident_dir_writable")
    metrics = ServiceMetrics("responder")
    state: dict[str, Responder] = {}

    def responder() -> Responder:
        found = state.get("responder")
        if found is None:  # only between startup and shutdown; readiness says so
            raise ServiceError(503, "not_ready", "the responder is starting or stopping")
        return found

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            try:
                state["responder"] = Responder(settings, session, metrics)
            except OSError as exc:
                log.error(
                    "incident_dir_unwritable",
                    incident_dir=str(settings.incident_dir),
                    error=f"{type(exc).__name__}: {exc.strerror or exc}",
                )
                health.fatal = f"cannot create {settings.incident_dir}: {exc}"
                yield
                return
            health.set("incident_dir_writable", True)
            log.info(
                "responder_ready",
                prometheus_url=settings.prometheus_url,
                incident_dir=str(settings.incident_dir),
                runbook_dir=str(settings.runbook_dir) if settings.runbook_dir else None,
            )
            try:
                yield
            finally:
                # The listener is closed and in-flight requests are done: finish the notes.
                await state.pop("responder").drain()

    app = FastAPI(
        title="servescope responder",
        version=settings.version,
        lifespan=lifespan,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    instrument_app(app, metrics, health, settings)

    token = settings.webhook_token.get_secret_value() if settings.webhook_token else None
    webhook = BearerToken(token, "alert webhooks") if token else None

    @app.post("/alerts", responses=errors(400, 401, 413), openapi_extra=WEBHOOK_BODY)
    async def alerts(request: Request) -> Response:
        if webhook is not None:
            webhook.check(request)  # before the body is read: a stranger costs no parsing
        payload = parse_webhook(await read_body(request, settings.max_request_bytes, STAGE))
        try:
            accepted = responder().submit(payload)
        except Busy as exc:
            error = ServiceError(503, "responder_busy", str(exc), STAGE)
            return JSONResponse(error.body(), status_code=503, headers={"retry-after": "5"})
        return JSONResponse({"accepted": accepted})

    @app.get("/incidents", responses=errors())
    async def incidents() -> Response:
        return JSONResponse(responder().incidents())

    @app.get("/incidents/{incident_id}", responses=errors(404))
    async def incident(incident_id: str) -> Response:
        note = responder().note(incident_id)
        if note is None:
            raise ServiceError(404, "not_found", "no such incident")
        return Response(note, media_type="application/json")

    return app
