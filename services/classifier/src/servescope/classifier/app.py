"""HTTP wiring of the classifier: OIP v2 routes over the model module."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import onnxruntime
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from servescope.classifier import oip
from servescope.classifier.drift import THRESHOLDS, DriftMonitor, DriftReference
from servescope.classifier.model import LoadedModel, ModelLoadError
from servescope.classifier.repository import ModelRepository, RepositoryEntry, scan
from servescope.classifier.settings import Settings
from servescope.runtime.bodies import read_body
from servescope.runtime.errors import ServiceError
from servescope.runtime.health import Health
from servescope.runtime.instrument import FASTAPI_TELEMETRY_OFF, instrument_app
from servescope.runtime.openapi import errors, request_body
from servescope.runtime.responses import JSONResponse
from servescope.telemetry.contract import load_contract
from servescope.telemetry.metrics import ServiceMetrics, observe
from servescope.telemetry.pipeline import PIPELINE
from servescope.telemetry.tracing import step_span

log = structlog.get_logger()
# The classifier's one fault step (and its span), checked against the telemetry contract's
# pipeline section at import.
(INFER,) = PIPELINE.expect_steps("classifier", "infer", where=__name__)


class ModelState:
    """The served models (the default one and a repository's) and the drift window.

    One drift window serves the whole classifier: it takes the inputs of the default model
    and of every model whose card has the same reference statistics and normalisation
    (every model `servescope models build` makes), since input drift is a property of the
    traffic, not of the model answering it. So the drift series stay three, whatever the
    number of models, and the window fills at the rate of all traffic.
    """

    def __init__(self, max_models: int) -> None:
        self.repository = ModelRepository(max_models)
        self.loading = True  # until every model has loaded (or loading failed for good)
        self.drift: DriftMonitor | None = None
        self.drift_models: set[str] = set()

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        model = self.repository.find(name, version)
        if model is not None:
            return model
        if self.loading:
            raise ServiceError(503, "model_not_ready", "model is still loading", stage="infer")
        wanted = f"{name}" + (f" version {version}" if version else "")
        served = list(self.repository.models.values())
        if len(served) == 1:
            serves = f"{served[0].name} version {served[0].version}"
        else:
            serves = f"{len(served)} models (POST /v2/repository/index lists them)"
        raise ServiceError(
            404,
            "unknown_model",
            f"model {wanted} is not served here; this server serves {serves}",
            stage="infer",
        )


def _drift_card(settings: Settings, model: LoadedModel) -> dict[str, Any] | None:
    """The default model's card, when it has the reference statistics drift needs."""
    card_path = settings.model_card_path or settings.model_path.with_name("model-card.json")
    try:
        card: dict[str, Any] = json.loads(card_path.read_text())
        if card.get("name") != model.name:
            log.warning(
                "drift_disabled", reason=f"model card {card_path} is for {card.get('name')}"
            )
            return None
        DriftReference.from_card(card)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("drift_disabled", reason=f"no usable model card at {card_path}: {exc}")
        return None
    return card


def _drift_monitor(settings: Settings, model: LoadedModel, card: dict[str, Any]) -> DriftMonitor:
    """Drift needs the card's reference statistics and the model's normalisation."""
    mean = float(model.parameters.get("normalize_mean", 0.0))
    std = float(model.parameters.get("normalize_std", 1.0))
    return DriftMonitor(DriftReference.from_card(card), mean, std, window=settings.drift_window)


def _same_inputs(card: dict[str, Any], entry: RepositoryEntry) -> bool:
    """A repository model whose inputs the default model's drift window can take."""
    ours, theirs = card.get("input", {}), entry.card.get("input", {})
    return bool(
        entry.card.get("reference") == card.get("reference")
        and theirs.get("normalisation") == ours.get("normalisation")
        and theirs.get("shape") == ours.get("shape")
    )


# An inference can answer, besides 200: a request it cannot use (400), an unknown model
# (404), a body over the limit (413), the labs' injected faults (500).
INFER_ERRORS = errors(400, 404, 413, 500)
INFER_BODY = request_body(
    {"application/json": oip.INFERENCE_REQUEST}, "An OIP v2 inference request (JSON tensors)."
)


def create_app(settings: Settings, health: Health) -> FastAPI:
    contract = load_contract()
    state = ModelState(contract.max_models)
    health.require("model_loaded")
    metrics = ServiceMetrics("classifier", contract)
    inference_seconds = metrics.histogram("servescope_inference_duration_seconds")
    batch_size = metrics.histogram("servescope_inference_batch_size")
    model_info = metrics.gauge("servescope_model_info")
    load_seconds = metrics.gauge("servescope_model_load_duration_seconds")
    memory_bytes = metrics.gauge("servescope_model_memory_bytes")
    allowed_name = contract.label_rules["model_name"].allows

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

    def publish(model: LoadedModel) -> None:
        model_info.labels(
            model.name, model.version, model.sha256, "onnxruntime", onnxruntime.__version__
        ).set(1)
        load_seconds.labels(model.name).set(model.load_seconds)
        memory = state.repository.memory_bytes[model.name]
        memory_bytes.labels(model.name).set(memory)
        log.info(
            "model_loaded",
            model_name=model.name,
            model_version=model.version,
            sha256=model.sha256,
            load_seconds=round(model.load_seconds, 4),
            memory_bytes=memory,
        )

    def load_all() -> None:
        """The default model, then the repository's one at a time (runs in a thread)."""
        repository, directory = state.repository, settings.model_repository
        started = time.perf_counter()
        entries = scan(directory, allowed_name) if directory is not None else []
        default = repository.load(
            settings.model_path,
            settings.model_name,
            settings.model_version,
            settings.intra_op_threads,
        )
        card = _drift_card(settings, default)
        if card is not None:
            state.drift = _drift_monitor(settings, default, card)
            state.drift_models = {default.name}
        publish(default)
        for entry in repository.plan(entries):
            model = repository.load(
                entry.path, entry.name, entry.version, settings.intra_op_threads, entry.sha256
            )
            if card is not None and _same_inputs(card, entry):
                state.drift_models.add(model.name)
            publish(model)
        if directory is not None:
            log.info(
                "model_repository_loaded",
                model_repository=str(directory),
                model_count=len(repository),
                load_seconds=round(time.perf_counter() - started, 4),
                memory_bytes=sum(repository.memory_bytes.values()),
            )

    async def load() -> None:
        # The slow_start fault (SERVESCOPE_FAULTS=slow_start:SECONDS): the model arrives late,
        # so the model routes answer 503 model_not_ready and /readyz waits, as with a big model.
        if faults.slow_start_seconds:
            await asyncio.sleep(faults.slow_start_seconds)
        try:
            await asyncio.to_thread(load_all)
        except ModelLoadError as exc:
            where = {"model_path": str(settings.model_path)}
            if settings.model_repository is not None:
                where["model_repository"] = str(settings.model_repository)
            log.error("model_load_failed", error=str(exc), **where)
            health.fatal = str(exc)
            return
        state.loading = False
        health.set("model_loaded", True)

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
            {
                "name": "servescope-classifier",
                "version": settings.version,
                "extensions": [oip.BINARY_EXTENSION],
            }
        )

    @app.get("/v2/health/live")
    async def server_live() -> Response:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready", responses={503: {"description": "Not ready yet."}})
    async def server_ready() -> Response:
        return JSONResponse({"ready": health.ready}, status_code=200 if health.ready else 503)

    @app.get("/v2/models/{name}", responses=errors(404))
    @app.get("/v2/models/{name}/versions/{version}", responses=errors(404))
    async def model_metadata(name: str, version: str | None = None) -> Response:
        return JSONResponse(oip.model_metadata(state.get(name, version)))

    @app.get("/v2/models/{name}/ready", responses=errors(404))
    @app.get("/v2/models/{name}/versions/{version}/ready", responses=errors(404))
    async def model_ready(name: str, version: str | None = None) -> Response:
        model = state.get(name, version)
        return JSONResponse({"name": model.name, "ready": True})

    # The repository index of Triton's repository extension: POST as Triton has it (a body
    # such as {"ready": true} is accepted and changes nothing: every model listed once the
    # classifier is ready is READY), GET for people and curl.
    @app.api_route("/v2/repository/index", methods=["GET", "POST"], responses=errors())
    async def repository_index() -> Response:
        return JSONResponse(state.repository.index())

    @app.post("/v2/models/{name}/infer", responses=INFER_ERRORS, openapi_extra=INFER_BODY)
    @app.post(
        "/v2/models/{name}/versions/{version}/infer",
        responses=INFER_ERRORS,
        openapi_extra=INFER_BODY,
    )
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        model = state.get(name, version)
        structlog.contextvars.bind_contextvars(model_name=model.name, model_version=model.version)
        body = await read_body(request, settings.max_request_bytes, stage="infer")
        head, binary = oip.split_binary(body, request.headers.get(oip.BINARY_HEADER))
        payload = oip.parse_request(head)
        feeds = oip.decode_inputs(payload, model, settings.max_batch_size, binary)
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
        observe(inference_seconds.labels(model.name), elapsed)
        batch_size.labels(model.name).observe(first.shape[0] if first.ndim else 1)
        if (
            state.drift is not None
            and model.name in state.drift_models
            and len(feeds) == 1
            and arrays
        ):
            state.drift.update(first, arrays[0])
        request_id = payload.get("id")
        answer = oip.encode_response(
            model, request_id if isinstance(request_id, str) else None, names, arrays
        )
        binary_outputs = oip.binary_outputs(payload, names)
        if not binary_outputs:
            return JSONResponse(answer)
        content, head_length = oip.encode_binary(answer, binary_outputs)
        return Response(
            content,
            media_type="application/octet-stream",
            headers={oip.BINARY_HEADER: str(head_length)},
        )

    return app
