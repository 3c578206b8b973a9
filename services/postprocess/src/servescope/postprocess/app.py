"""HTTP wiring of the postprocess service."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from servescope.postprocess.cards import CardInfo, ModelCardError, load_cards, repository_cards
from servescope.postprocess.scoring import labels_for, score
from servescope.postprocess.settings import Settings
from servescope.runtime.bodies import read_body
from servescope.runtime.errors import ServiceError
from servescope.runtime.health import Health
from servescope.runtime.instrument import FASTAPI_TELEMETRY_OFF, instrument_app
from servescope.runtime.openapi import errors, request_body
from servescope.runtime.responses import JSONResponse
from servescope.telemetry.metrics import ServiceMetrics
from servescope.telemetry.pipeline import PIPELINE
from servescope.telemetry.tracing import step_span

log = structlog.get_logger()
# Postprocess's one fault step (and its span), checked against the telemetry contract's
# pipeline section at import.
(SOFTMAX_TOPK,) = PIPELINE.expect_steps("postprocess", "softmax_topk", where=__name__)


class PostprocessRequest(BaseModel):
    # Strict: `true` is not a logit, nor "3" a top_k (found by schemathesis).
    model_config = ConfigDict(strict=True)

    model_name: str = Field(max_length=200)
    model_version: str = Field("", max_length=100)
    logits: list[float] = Field(min_length=1, max_length=10_000)
    top_k: int | None = Field(None, ge=1, le=100)


def create_app(settings: Settings, health: Health) -> FastAPI:
    cards: dict[str, CardInfo] = {}
    health.require("model_cards_loaded")
    metrics = ServiceMetrics("postprocess")
    confidence = metrics.histogram("servescope_prediction_confidence_ratio")
    predictions = metrics.counter("servescope_predictions_total")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            paths = list(settings.model_cards)
            if settings.model_repository is not None:
                paths += repository_cards(settings.model_repository, metrics.contract.max_models)
            cards.update(load_cards(paths))
        except ModelCardError as exc:
            log.error("model_card_load_failed", error=str(exc))
            health.fatal = str(exc)
        else:
            health.set("model_cards_loaded", True)
            log.info("model_cards_loaded", models=sorted(cards))
        yield

    app = FastAPI(
        title="servescope postprocess",
        version=settings.version,
        lifespan=lifespan,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    faults = instrument_app(
        app, metrics, health, settings, fault_steps=PIPELINE.fault_steps("postprocess")
    )

    @app.post(
        "/v1/postprocess",
        responses=errors(413, 422, 500),
        openapi_extra=request_body(
            {"application/json": PostprocessRequest.model_json_schema()},
            "A model's logits for one input, and how many classes to answer.",
        ),
    )
    async def postprocess(http_request: Request) -> Response:
        body = await read_body(http_request, settings.max_request_bytes, stage="postprocess")
        try:
            request = PostprocessRequest.model_validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise ServiceError(
                422, "invalid_request", f"invalid request: {problems}", "postprocess"
            ) from exc
        if not all(math.isfinite(x) for x in request.logits):
            raise ServiceError(
                422, "invalid_logits", "logits must be finite numbers", "postprocess"
            )
        card = cards.get(request.model_name)
        labels = labels_for(len(request.logits), card.labels if card else None)
        temperature = card.temperature if card else 1.0
        with step_span(SOFTMAX_TOPK.span) as span:
            await faults.inject(SOFTMAX_TOPK.name)  # inside the span, so traces show it
            result = score(
                np.asarray(request.logits),
                labels,
                temperature,
                request.top_k or settings.default_top_k,
            )
            span.set_attribute("servescope.model.name", request.model_name)
            span.set_attribute("servescope.model.version", request.model_version)
            span.set_attribute("servescope.prediction.class", result["label"])
            span.set_attribute("servescope.prediction.confidence", result["confidence"])
        confidence.observe(result["confidence"])
        predictions.labels(metrics.class_label(result["label"])).inc()
        result["calibrated"] = card is not None and temperature != 1.0
        result["label_source"] = "model_card" if card and card.labels == labels else "class_index"
        return JSONResponse(result)

    return app
