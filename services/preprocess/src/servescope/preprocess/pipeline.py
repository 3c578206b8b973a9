"""The prediction pipeline: decode, build the tensor, classify, postprocess.

HTTP framework free: app.py hands it bytes and gets a result dict or a ServiceError.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from servescope.preprocess import downstream
from servescope.preprocess.imaging import ImageLimits, InputSpec, decode_image, normalise, resize
from servescope.preprocess.settings import Settings
from servescope.runtime.errors import ServiceError
from servescope.runtime.faults import Faults
from servescope.telemetry.metrics import ServiceMetrics, observe
from servescope.telemetry.pipeline import PIPELINE
from servescope.telemetry.tracing import step_span

# The stages this module times and the fault steps it runs, as the telemetry contract's
# pipeline section declares them; a mismatch fails here, at import, naming this module.
DECODE, PREPROCESS, INFER, POSTPROCESS, END_TO_END = PIPELINE.expect_stages(
    "decode", "preprocess", "infer", "postprocess", "end_to_end", where=__name__
)
STEP_DECODE, STEP_RESIZE, STEP_NORMALISE = PIPELINE.expect_steps(
    "preprocess", "decode", "resize", "normalise", where=__name__
)
STAGES = PIPELINE.stage_names
FAULT_STEPS = PIPELINE.fault_steps("preprocess")

log = structlog.get_logger()


@dataclass
class ModelInfo:
    """What preprocess knows about a served model, from the classifier's metadata."""

    name: str
    version: str
    spec: InputSpec
    output_name: str
    fetched_at: float = field(default_factory=time.monotonic)


class ModelCache:
    """Metadata of the models the edge routes to, least recently used evicted first.

    Bounded by the contract's `max_models`, which no repository may exceed, so a served
    model is evicted only after the repository changed; unknown names are never stored.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, ModelInfo] = OrderedDict()

    def get(self, name: str) -> ModelInfo | None:
        info = self._entries.get(name)
        if info is not None:
            self._entries.move_to_end(name)
        return info

    def put(self, name: str, info: ModelInfo) -> None:
        self._entries[name] = info
        self._entries.move_to_end(name)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def drop(self, name: str) -> None:
        self._entries.pop(name, None)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)


def unknown_model(name: str) -> ServiceError:
    return ServiceError(404, "unknown_model", f"model {name} is not served here")


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        metrics: ServiceMetrics,
        faults: Faults,
    ) -> None:
        self.settings = settings
        self.faults = faults
        self.session = session
        stage = metrics.histogram("servescope_stage_duration_seconds")
        self._stage = {name: stage.labels(name) for name in STAGES}
        outbound = metrics.histogram("http_client_request_duration_seconds")
        outcomes = metrics.contract.label_rules["outcome"].values
        self._outbound = {
            (peer, outcome): outbound.labels(peer, outcome)
            for peer in PIPELINE.service("preprocess").calls
            for outcome in outcomes
        }
        self.limits = ImageLimits(settings.max_pixels, settings.min_side)
        connect = settings.connect_timeout_seconds
        self.classifier = downstream.Endpoint(
            "classifier",
            settings.classifier_url,
            aiohttp.ClientTimeout(total=settings.classifier_timeout_seconds, connect=connect),
        )
        self.postprocess = downstream.Endpoint(
            "postprocess",
            settings.postprocess_url,
            aiohttp.ClientTimeout(total=settings.postprocess_timeout_seconds, connect=connect),
        )
        self.model: ModelInfo | None = None  # the default model, served at /v1/predict
        self.models = ModelCache(metrics.contract.max_models)
        self._model_name = metrics.contract.label_rules["model_name"]
        self._refreshing: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    def known_name(self, name: str) -> bool:
        """Whether `name` can name a model at all: the contract's model_name values, and
        never a relative path segment (it goes into the classifier's URL)."""
        return self._model_name.allows(name) and name not in {".", ".."}

    async def fetch_model_info(self, name: str | None = None) -> ModelInfo:
        """Ask the classifier for a model's metadata (the default model without `name`)."""
        name = name or self.settings.model_name
        metadata = await downstream.call(
            self.session,
            self.classifier,
            "GET",
            f"/v2/models/{name}",
            not_found=self._not_found(name),
        )
        try:
            spec = InputSpec.from_metadata(metadata)
            info = ModelInfo(
                name=str(metadata["name"]),
                version=str((metadata.get("versions") or ["1"])[0]),
                spec=spec,
                output_name=str(metadata["outputs"][0]["name"]),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ServiceError(
                502, "classifier_error", f"model metadata is unusable: {exc}", "classifier"
            ) from exc
        known = self.model if name == self.settings.model_name else self.models.get(name)
        if known is None or (known.name, known.version) != (info.name, info.version):
            log.info("model_metadata_loaded", model_name=info.name, model_version=info.version)
        if name == self.settings.model_name:
            self.model = info
        else:
            self.models.put(name, info)
        return info

    def _not_found(self, name: str) -> ServiceError | None:
        """What a 404 from the classifier means: the client named a model that is not
        served; for the default model it stays a classifier_error (a misconfiguration,
        whose 502 carries the classifier's own explanation)."""
        return None if name == self.settings.model_name else unknown_model(name)

    async def model_for(self, name: str | None) -> ModelInfo:
        """The metadata of the model `name` (the default without), fetched on first use."""
        if name is None or name == self.settings.model_name:
            if self.model is None:
                raise ServiceError(
                    503, "classifier_unavailable", "model metadata not yet known", "classifier"
                )
            return self.model
        if not self.known_name(name):
            raise ServiceError(
                404, "unknown_model", f"no such model: names match {self._model_name.pattern}"
            )
        info = self.models.get(name)
        if info is None:
            return await self.fetch_model_info(name)
        if time.monotonic() - info.fetched_at > self.settings.metadata_refresh_seconds:
            self._refresh_in_background(name)  # this request uses what is known
        return info

    async def keep_model_info_fresh(self, on_ready: Any) -> None:
        """Fetch metadata until it arrives (then mark ready), and refresh it periodically."""
        delay = 0.25
        while True:
            try:
                await self.fetch_model_info()
                on_ready()
                await asyncio.sleep(self.settings.metadata_refresh_seconds)
                delay = 0.25
            except ServiceError as exc:
                if self.model is None:
                    log.warning("waiting_for_classifier", error=exc.message, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _observe(self, stage: str, seconds: float) -> None:
        observe(self._stage[stage], seconds)

    def _recorder(self, peer: str) -> downstream.Recorder:
        def record(outcome: str, seconds: float) -> None:
            observe(self._outbound[(peer, outcome)], seconds)

        return record

    async def predict(
        self, image_bytes: bytes, top_k: int | None, model_name: str | None = None
    ) -> dict[str, Any]:
        """Run one prediction on `model_name` (the default model without); every stage is
        timed, failed ones included."""
        started = time.perf_counter()
        try:
            return await self._predict(image_bytes, top_k, model_name)
        finally:
            self._observe(END_TO_END.name, time.perf_counter() - started)

    async def _predict(
        self, image_bytes: bytes, top_k: int | None, model_name: str | None
    ) -> dict[str, Any]:
        model = await self.model_for(model_name)
        structlog.contextvars.bind_contextvars(model_name=model.name, model_version=model.version)
        mark = time.perf_counter()
        try:
            with step_span(STEP_DECODE.span) as span:
                span.set_attribute("servescope.input.bytes", len(image_bytes))
                await self.faults.inject(STEP_DECODE.name)
                try:
                    image = decode_image(image_bytes, self.limits)
                except ServiceError as exc:
                    span.set_attribute("error.type", exc.kind)
                    raise
                span.set_attribute("servescope.image.format", image.format or "")
                span.set_attribute("servescope.image.width", image.width)
                span.set_attribute("servescope.image.height", image.height)
        finally:
            now = time.perf_counter()
            self._observe(DECODE.name, now - mark)
            mark = now
        with step_span(STEP_RESIZE.span) as span:
            await self.faults.inject(STEP_RESIZE.name)
            resized = resize(image, model.spec)
            span.set_attribute("servescope.image.width", resized.width)
            span.set_attribute("servescope.image.height", resized.height)
        with step_span(STEP_NORMALISE.span) as span:
            await self.faults.inject(STEP_NORMALISE.name)
            tensor = normalise(resized, model.spec)
            span.set_attribute("servescope.model.name", model.name)
            span.set_attribute("servescope.model.version", model.version)
        now = time.perf_counter()
        self._observe(PREPROCESS.name, now - mark)
        mark = now
        try:
            answer = await self._infer(model, tensor)
        except ServiceError as exc:
            if exc.kind == "unknown_model":
                self.models.drop(model.name)  # no longer served since its metadata came
            raise
        now = time.perf_counter()
        self._observe(INFER.name, now - mark)
        mark = now
        try:
            output = next(o for o in answer["outputs"] if o["name"] == model.output_name)
            logits = output["data"]
            served_version = str(answer.get("model_version", model.version))
        except (KeyError, TypeError, StopIteration) as exc:
            raise ServiceError(
                502, "classifier_error", "inference answer lacks the expected output", "classifier"
            ) from exc
        if served_version != model.version:
            # The classifier now serves another version: pick up its metadata for next time.
            self._refresh_in_background(model.name)
        result: dict[str, Any] = await downstream.call(
            self.session,
            self.postprocess,
            "POST",
            "/v1/postprocess",
            {
                "model_name": model.name,
                "model_version": served_version,
                "logits": logits,
                "top_k": top_k or self.settings.default_top_k,
            },
            record=self._recorder("postprocess"),
        )
        self._observe(POSTPROCESS.name, time.perf_counter() - mark)
        result["model_name"] = model.name
        result["model_version"] = served_version
        return result

    async def _infer(self, model: ModelInfo, tensor: Any) -> Any:
        return await downstream.call(
            self.session,
            self.classifier,
            "POST",
            f"/v2/models/{model.name}/infer",
            {
                "inputs": [
                    {
                        "name": model.spec.name,
                        "shape": list(tensor.shape),
                        "datatype": "FP32",
                        "data": tensor.ravel(),
                    }
                ]
            },
            record=self._recorder("classifier"),
            not_found=self._not_found(model.name),
        )

    def _refresh_in_background(self, name: str) -> None:
        if name in self._refreshing:
            return
        self._refreshing.add(name)
        task = asyncio.get_running_loop().create_task(self._refresh_quietly(name))
        self._background.add(task)  # a reference, so the task is not collected mid-way
        task.add_done_callback(self._background.discard)

    async def _refresh_quietly(self, name: str) -> None:
        try:
            await self.fetch_model_info(name)
        except ServiceError as exc:
            if exc.kind == "unknown_model":
                self.models.drop(name)  # no longer served: the next request hears 404
            log.warning("model_metadata_refresh_failed", model_name=name, error=exc.message)
        finally:
            self._refreshing.discard(name)
