"""HTTP wiring of the preprocess service, the public edge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response
from PIL import Image

from servescope.preprocess import downstream
from servescope.preprocess.pipeline import FAULT_STEPS, Pipeline
from servescope.preprocess.settings import Settings
from servescope.preprocess.upload import extract_image
from servescope.runtime.bodies import read_body
from servescope.runtime.errors import ServiceError
from servescope.runtime.health import Health
from servescope.runtime.instrument import FASTAPI_TELEMETRY_OFF, instrument_app
from servescope.runtime.responses import JSONResponse
from servescope.telemetry.metrics import ServiceMetrics


def create_app(settings: Settings, health: Health) -> FastAPI:
    health.require("model_metadata")
    holder: dict[str, Pipeline] = {}
    metrics = ServiceMetrics("preprocess")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        Image.init()  # load Pillow's format plugins now, not during the first request
        session = downstream.new_session(settings.max_connections)
        pipeline = Pipeline(settings, session, metrics, faults)
        holder["pipeline"] = pipeline
        refresher = asyncio.create_task(
            pipeline.keep_model_info_fresh(lambda: health.set("model_metadata", True))
        )
        yield
        refresher.cancel()
        await session.close()

    app = FastAPI(
        title="servescope preprocess",
        version=settings.version,
        lifespan=lifespan,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    faults = instrument_app(app, metrics, health, settings, fault_steps=FAULT_STEPS)

    @app.post("/v1/predict")
    async def predict(request: Request, top_k: int | None = Query(None, ge=1, le=100)) -> Response:
        """Classify one image: a raw image/png or image/jpeg body, or a multipart upload."""
        body = await read_body(request, settings.max_body_bytes, stage="decode")
        image_bytes = extract_image(body, request.headers.get("content-type"))
        result = await holder["pipeline"].predict(image_bytes, top_k)
        return JSONResponse(result)

    @app.get("/v1/model")
    async def model() -> Response:
        """The model preprocess is serving through, as it learned it from the classifier."""
        info = holder["pipeline"].model
        if info is None:
            raise ServiceError(503, "classifier_unavailable", "model metadata not yet known")
        return JSONResponse(
            {"name": info.name, "version": info.version, "input_shape": info.spec.shape}
        )

    return app
