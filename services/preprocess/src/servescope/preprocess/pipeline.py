"""The prediction pipeline: decode, build the tensor, classify, postprocess.

HTTP framework free: app.py hands it bytes and gets a result dict or a ServiceError.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
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
    """What preprocess knows about the served model, from the classifier's metadata."""

    name: str
    version: str
    spec: InputSpec
    output_name: str


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
        self.model: ModelInfo | None = None

    async def fetch_model_info(self) -> ModelInfo:
        metadata = await downstream.call(
            self.session, self.classifier, "GET", f"/v2/models/{self.settings.model_name}"
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
        if self.model is None or (self.model.name, self.model.version) != (info.name, info.version):
            log.info("model_metadata_loaded", model_name=info.name, model_version=info.version)
        self.model = info
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

    async def predict(self, image_bytes: bytes, top_k: int | None) -> dict[str, Any]:
        """Run one prediction; every stage is timed, failed ones included."""
        started = time.perf_counter()
        try:
            return await self._predict(image_bytes, top_k)
        finally:
            self._observe(END_TO_END.name, time.perf_counter() - started)

    async def _predict(self, image_bytes: bytes, top_k: int | None) -> dict[str, Any]:
        model = self.model
        if model is None:
            raise ServiceError(
                503, "classifier_unavailable", "model metadata not yet known", "classifier"
            )
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
        answer = await downstream.call(
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
        )
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
            asyncio.get_running_loop().create_task(self._refresh_quietly())
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

    async def _refresh_quietly(self) -> None:
        try:
            await self.fetch_model_info()
        except ServiceError as exc:
            log.warning("model_metadata_refresh_failed", error=exc.message)
