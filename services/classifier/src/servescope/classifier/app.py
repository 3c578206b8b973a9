"""HTTP wiring of the classifier: OIP v2 routes over the model module."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import onnxruntime
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from servescope.classifier import oip
from servescope.classifier.drift import THRESHOLDS, DriftMonitor, DriftReference
from servescope.classifier.model import LoadedModel, ModelLoadError, load_model
from servescope.classifier.settings import Settings
from servescope.runtime.bodies import read_body
from servescope.runtime.errors import ServiceError
from servescope.runtime.health import Health
from servescope.runtime.instrument import FASTAPI_TELEMETRY_OFF, instrument_app
from servescope.runtime.responses import JSONResponse
from servescope.telemetry.metrics import ServiceMetrics, observe
from servescope.telemetry.pipeline import PIPELINE
from servescope.telemetry.tracing import step_span

log = structlog.get_logger()
# The classifier's one fault step (and its span), checked against the telemetry contract's
# pipeline section at import.
(INFER,) = PIPELINE.expect_steps("classifier", "infer", where=__name__)


class ModelState:
    """Holds the one served model once it has loaded and warmed up."""

    def __init__(self) -> None:
        self.model: LoadedModel | None = None
        self.drift: DriftMonitor | None = None

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        model = self.model
        if model is None:
            raise ServiceError(503, "model_not_ready", "model is still loading", stage="infer")
        if name != model.name or (version is not None and version != model.version):
            wanted = f"{name}" + (f" version {version}" if version else "")
            raise ServiceError(
                404,
                "unknown_model",
                f"model {wanted} is not served here; this server serves "
                f"{model.name} version {model.version}",
                stage="infer",
            )
        return model


def _drift_monitor(settings: Settings, model: LoadedModel) -> DriftMonitor | None:
    """Drift needs the card's reference statistics and the model's normalisation."""
    card_path = settings.model_card_path or settings.model_path.with_name("model-card.json")
    try:
        card = json.loads(card_path.read_text())
        if card.get("name") != model.name:
            log.warning(
                "drift_disabled", reason=f"model card {card_path} is for {card.get('name')}"
            )
            return None
        reference = DriftReference.from_card(card)
        mean = float(model.parameters.get("normalize_mean", 0.0))
        std = float(model.parameters.get("normalize_std", 1.0))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("drift_disabled", reason=f"no usable model card at {card_path}: {exc}")
        return None
    return DriftMonitor(reference, mean, std, window=settings.drift_window)


def create_app(settings: Settings, health: Health) -> FastAPI:
    state = ModelState()
    health.require("model_loaded")
    metrics = ServiceMetrics("classifier")
    inference_seconds = metrics.histogram("servescope_inference_duration_seconds")
    batch_size = metrics.histogram("servescope_inference_batch_size")

    # Drift scores are computed when Prometheus scrapes, not on every inference: a request
    # only adds its input to the window (O(bins)); the PSI sums wait for someone to look.
    def drift_signal(signal: str) -> Callable[[], float]:
        return lambda: state.drift.scores()[signal] if state.drift else 0.0

    drift_score = metrics.gauge("servescope_input_drift_score")
    for signal in THRESHOLDS:
        drift_score.labels(signal).set_function(drift_signal(signal))
    metrics.gauge("servescope_drift_window_inputs").set_function(
        lambda: float(len(state.drift)) if state.drift else 0.0
    )

    async def load() -> None:
        # The slow_start fault (SERVESCOPE_FAULTS=slow_start:SECONDS): the model arrives late,
        # so the model routes answer 503 model_not_ready and /readyz waits, as with a big model.
        if faults.slow_start_seconds:
            await asyncio.sleep(faults.slow_start_seconds)
        try:
            model = await asyncio.to_thread(
                load_model,
                settings.model_path,
                settings.model_name,
                settings.model_version,
                settings.intra_op_threads,
            )
        except ModelLoadError as exc:
            log.error("model_load_failed", error=str(exc), model_path=str(settings.model_path))
            health.fatal = str(exc)
            return
        state.model = model
        state.drift = _drift_monitor(settings, model)
        metrics.gauge("servescope_model_info").labels(
            model.name, model.version, model.sha256, "onnxruntime", onnxruntime.__version__
        ).set(1)
        metrics.gauge("servescope_model_load_duration_seconds").set(model.load_seconds)
        health.set("model_loaded", True)
        log.info(
            "model_loaded",
            model_name=model.name,
            model_version=model.version,
            sha256=model.sha256,
            load_seconds=round(model.load_seconds, 4),
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Load in the background so /healthz answers while a large model loads
        # (the startup probe's job); /readyz turns true after the warm-up inference.
        task = asyncio.create_task(load())
        yield
        task.cancel()

    app = FastAPI(
        title="servescope classifier",
        version=settings.version,
        lifespan=lifespan,
        telemetry=FASTAPI_TELEMETRY_OFF,
    )
    faults = instrument_app(
        app, metrics, health, settings, fault_steps=PIPELINE.fault_steps("classifier")
    )

    @app.get("/v2")
    async def server_metadata() -> Response:
        return JSONResponse(
            {"name": "servescope-classifier", "version": settings.version, "extensions": []}
        )

    @app.get("/v2/health/live")
    async def server_live() -> Response:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready")
    async def server_ready() -> Response:
        return JSONResponse({"ready": health.ready}, status_code=200 if health.ready else 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> Response:
        return JSONResponse(oip.model_metadata(state.get(name, version)))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        model = state.get(name, version)
        return JSONResponse({"name": model.name, "ready": True})

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        model = state.get(name, version)
        structlog.contextvars.bind_contextvars(model_name=model.name, model_version=model.version)
        body = await read_body(request, settings.max_request_bytes, stage="infer")
        payload = oip.parse_request(body)
        feeds = oip.decode_inputs(payload, model, settings.max_batch_size)
        names = oip.requested_outputs(payload, model)
        first = next(iter(feeds.values()))
        with step_span(INFER.span) as span:
            span.set_attribute("servescope.model.name", model.name)
            span.set_attribute("servescope.model.version", model.version)
            span.set_attribute(
                "servescope.inference.batch_size", int(first.shape[0]) if first.ndim else 1
            )
            await faults.inject(INFER.name)
            started = time.perf_counter()
            try:
                if settings.offload_inference:
                    arrays = await run_in_threadpool(model.run, feeds, names)
                else:
                    arrays = model.run(feeds, names)
            except Exception as exc:  # onnxruntime's own errors: a tensor it cannot compute on
                raise ServiceError(
                    400, "inference_failed", f"onnxruntime rejected the input: {exc}", "infer"
                ) from exc
            elapsed = time.perf_counter() - started
        observe(inference_seconds, elapsed)
        batch_size.observe(first.shape[0] if first.ndim else 1)
        if state.drift is not None and len(feeds) == 1 and arrays:
            state.drift.update(first, arrays[0])
        request_id = payload.get("id")
        return JSONResponse(
            oip.encode_response(
                model, request_id if isinstance(request_id, str) else None, names, arrays
            )
        )

    return app
