"""Loading an ONNX model and running it: no HTTP here.

Whatever the model declares (input and output names, datatypes, shapes) is read from the
file, so any ONNX model can be served without code changes. Hints the serving path needs
but ONNX has no field for (labels, normalisation) travel in the model's metadata_props under
the `servescope.` prefix and are passed through as OIP `parameters`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

METADATA_PREFIX = "servescope."

# ONNX Runtime tensor types and the OIP v2 datatypes they map to.
ORT_TO_OIP = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
}
OIP_TO_NUMPY: dict[str, Any] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
}


class ModelLoadError(Exception):
    """The model file is missing, unreadable or not a model onnxruntime can run."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a dynamic dimension

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class LoadedModel:
    name: str
    version: str
    path: Path
    sha256: str
    size_bytes: int
    session: ort.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: dict[str, str] = field(default_factory=dict)
    load_seconds: float = 0.0

    def input_spec(self, name: str) -> TensorSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        return list(self.session.run(output_names, feeds))

    def warm_up(self) -> None:
        """One inference on zeros (dynamic dimensions set to 1) before reporting ready."""
        feeds = {
            spec.name: np.zeros(
                [d if d > 0 else 1 for d in spec.shape], OIP_TO_NUMPY[spec.datatype]
            )
            for spec in self.inputs
        }
        self.run(feeds, [spec.name for spec in self.outputs])


def _spec(arg: Any) -> TensorSpec:
    datatype = ORT_TO_OIP.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has type {arg.type}, which OIP v2 cannot carry")
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


def load_model(
    path: Path,
    name: str | None = None,
    version: str | None = None,
    intra_op_threads: int = 1,
) -> LoadedModel:
    started = time.perf_counter()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings and below would go to stderr unstructured
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from exc
    meta = session.get_modelmeta()
    props = {
        key.removeprefix(METADATA_PREFIX): value
        for key, value in (meta.custom_metadata_map or {}).items()
        if key.startswith(METADATA_PREFIX)
    }
    model = LoadedModel(
        name=name or props.pop("model_name", None) or path.stem,
        version=version or props.pop("model_version", None) or str(meta.version or 1),
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        session=session,
        inputs=[_spec(arg) for arg in session.get_inputs()],
        outputs=[_spec(arg) for arg in session.get_outputs()],
        parameters={k: v for k, v in props.items() if k not in ("model_name", "model_version")},
    )
    model.warm_up()
    model.load_seconds = time.perf_counter() - started
    return model
