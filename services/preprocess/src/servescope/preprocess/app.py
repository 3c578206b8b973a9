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
from servescope.preprocess.upload import ACCEPTED, RAW_IMAGE_TYPES, extract_image
from servescope.runtime.bodies import read_body
from servescope.runtime.errors import ServiceError
from servescope.runtime.health import Health
from servescope.runtime.instrument import FASTAPI_TELEMETRY_OFF, instrument_app
from servescope.runtime.openapi import errors, request_body
from servescope.runtime.responses import JSONResponse
from servescope.telemetry.metrics import ServiceMetrics

# What a prediction can answer besides 200: the upload's refusals (decode), a downstream that
# failed (502), did not answer (504) or is away (503), and the labs' injected faults (500).
PREDICT_STATUSES = (413, 415, 422, 500, 502, 504)
PREDICT_ERRORS = errors(*PREDICT_STATUSES)
_IMAGE = {"type": "string", "format": "binary"}
UPLOAD = request_body(
    {
        **dict.fromkeys(sorted(RAW_IMAGE_TYPES), _IMAGE),
        "multipart/form-data": {
            "type": "object",
            "required": ["file"],
            "properties": {"file": _IMAGE},
        },
    },
    f"One image: {ACCEPTED}.",
)


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

    async def classify(request: Request, top_k: int | None, model_name: str | None) -> Response:
        body = await read_body(request, settings.max_body_bytes, stage="decode")
        image_bytes = extract_image(body, request.headers.get("content-type"))
        result = await holder["pipeline"].predict(image_bytes, top_k, model_name)
        return JSONResponse(result)

    @app.post("/v1/predict", responses=PREDICT_ERRORS, openapi_extra=UPLOAD)
    async def predict(request: Request, top_k: int | None = Query(None, ge=1, le=100)) -> Response:
        """Classify one image with the default model: a raw image/png or image/jpeg body, or
        a multipart upload."""
        return await classify(request, top_k, None)

    @app.post(
        "/v1/models/{name}/predict", responses=errors(404, *PREDICT_STATUSES), openapi_extra=UPLOAD
    )
    async def predict_with(
        name: str, request: Request, top_k: int | None = Query(None, ge=1, le=100)
    ) -> Response:
        """Classify one image with the model `name` (same body and answer as /v1/predict);
        404 unknown_model when the classifier does not serve it."""
        return await classify(request, top_k, name)

    @app.get("/v1/model", responses=errors())
    async def model() -> Response:
        """The model preprocess is serving through, as it learned it from the classifier."""
        info = holder["pipeline"].model
        if info is None:
            raise ServiceError(503, "classifier_unavailable", "model metadata not yet known")
        return JSONResponse(
            {"name": info.name, "version": info.version, "input_shape": info.spec.shape}
        )

    return app
