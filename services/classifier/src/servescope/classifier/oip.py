"""Open Inference Protocol v2 (REST): request checks and response shapes.

Tensors come as JSON, or as raw bytes after the JSON with the binary tensor data extension
(KServe's and Triton's clients send them so by default): the header
`Inference-Header-Content-Length` says where the JSON ends, each binary input carries
`parameters.binary_data_size`, and its bytes follow in order, little-endian, row-major. An
output is answered the same way when the request asks for it (`binary_data` on the output or
`binary_data_output` on the request).

Everything a client can get wrong is answered with a 400 and an OIP error body naming the
tensor and what was wrong, never a 500.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from servescope.classifier.model import OIP_TO_NUMPY, LoadedModel
from servescope.runtime.errors import ServiceError


def _bad(message: str, kind: str = "invalid_tensor") -> ServiceError:
    return ServiceError(400, kind, message, stage="infer")


def parse_request(body: bytes) -> dict[str, Any]:
    if not body:
        raise _bad("empty request body; send an OIP v2 inference request", "invalid_json")
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"request body is not valid JSON: {exc}", "invalid_json") from exc
    if not isinstance(request, dict):
        raise _bad("request body must be a JSON object with an 'inputs' list", "invalid_json")
    return request


# The request header of the binary tensor data extension, and the extension's name as the
# server metadata lists it.
BINARY_HEADER = "inference-header-content-length"
BINARY_EXTENSION = "binary_tensor_data"


def split_binary(body: bytes, header: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a request body."""
    if header is None:
        return body, b""
    try:
        length = int(header)
    except ValueError:
        raise _bad("Inference-Header-Content-Length must be a whole number of bytes") from None
    if not 0 <= length <= len(body):
        raise _bad(f"Inference-Header-Content-Length {length} is outside a body of {len(body)}")
    return body[:length], body[length:]


def _binary_size(tensor: dict[str, Any]) -> int | None:
    parameters = tensor.get("parameters")
    if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad("parameters.binary_data_size must be a non-negative whole number")
    return size


def decode_inputs(
    request: dict[str, Any], model: LoadedModel, max_batch: int, binary: bytes = b""
) -> dict[str, np.ndarray]:
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("'inputs' must be a non-empty list of tensors")
    feeds: dict[str, np.ndarray] = {}
    offset = 0  # into `binary`, input after input
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise _bad("each input must be an object with name, shape, datatype and data")
        name = tensor.get("name")
        spec = model.input_spec(name) if isinstance(name, str) else None
        if spec is None:
            expected = ", ".join(s.name for s in model.inputs)
            raise _bad(f"unknown input {name!r}; model {model.name} expects: {expected}")
        datatype = tensor.get("datatype")
        if datatype != spec.datatype:
            raise _bad(
                f"input {name!r} has datatype {datatype!r}; the model expects {spec.datatype}"
            )
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _bad(f"input {name!r} needs 'shape' as a list of non-negative integers")
        if len(shape) != len(spec.shape) or any(
            want > 0 and got != want for got, want in zip(shape, spec.shape, strict=True)
        ):
            raise _bad(f"input {name!r} has shape {shape}; the model expects {list(spec.shape)}")
        if spec.shape and spec.shape[0] == -1 and shape[0] > max_batch:
            raise _bad(f"batch of {shape[0]} exceeds the limit of {max_batch}", "batch_too_large")
        size = _binary_size(tensor)
        dtype = np.dtype(OIP_TO_NUMPY[datatype]).newbyteorder("<")
        if size is not None:
            needs = math.prod(shape) * dtype.itemsize
            if size != needs or offset + size > len(binary):
                raise _bad(
                    f"input {name!r} has binary_data_size {size}; shape {shape} of {datatype} "
                    f"needs {needs}, and {len(binary) - offset} binary bytes are left"
                )
            # A view of the bytes the request really sent: nothing allocated for a claim.
            array = np.frombuffer(binary, dtype=dtype, count=math.prod(shape), offset=offset)
            offset += size
        else:
            data = tensor.get("data")
            if not isinstance(data, list):
                raise _bad(f"input {name!r} needs 'data' as a JSON array")
            try:
                # An overflow becomes inf, refused just below: no warning for the log.
                with np.errstate(over="ignore"):
                    array = np.asarray(data, dtype=OIP_TO_NUMPY[datatype])
            except (ValueError, TypeError) as exc:
                raise _bad(f"input {name!r} data is not all {datatype} numbers: {exc}") from exc
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            # JSON has no NaN or infinity: numpy makes them from `null` or out-of-range numbers.
            raise _bad(f"input {name!r} data is not all {datatype} numbers: null or out of range")
        if array.size != math.prod(shape):
            raise _bad(
                f"input {name!r} has {array.size} elements; shape {shape} needs {math.prod(shape)}"
            )
        feeds[spec.name] = array.reshape(shape)
    missing = [s.name for s in model.inputs if s.name not in feeds]
    if missing:
        raise _bad(f"missing inputs: {', '.join(missing)}")
    if offset != len(binary):
        raise _bad(f"{len(binary) - offset} binary bytes after the last binary input")
    return feeds


def requested_outputs(request: dict[str, Any], model: LoadedModel) -> list[str]:
    names = [spec.name for spec in model.outputs]
    wanted = request.get("outputs")
    if not wanted:
        return names
    if not isinstance(wanted, list):
        raise _bad("'outputs' must be a list of {name: ...} objects")
    chosen: list[str] = []
    for item in wanted:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in names:
            raise _bad(f"unknown output {name!r}; the model has: {', '.join(names)}")
        chosen.append(name)
    return chosen


def binary_outputs(request: dict[str, Any], names: list[str]) -> set[str]:
    """The outputs the request wants as binary data."""
    parameters = request.get("parameters")
    if isinstance(parameters, dict) and parameters.get("binary_data_output") is True:
        return set(names)
    wanted = request.get("outputs") or []
    return {
        item["name"]
        for item in wanted
        if isinstance(item, dict)
        and isinstance(item.get("parameters"), dict)
        and item["parameters"].get("binary_data") is True
    }


def encode_binary(response: dict[str, Any], binary: set[str]) -> tuple[bytes, int]:
    """The body with the `binary` outputs' bytes after the JSON, and the JSON's length."""
    tail: list[bytes] = []
    for output in response["outputs"]:
        if output["name"] in binary:
            raw = np.ascontiguousarray(output.pop("data")).astype(
                np.dtype(OIP_TO_NUMPY[output["datatype"]]).newbyteorder("<"), copy=False
            )
            output["parameters"] = {"binary_data_size": raw.nbytes}
            tail.append(raw.tobytes())
    head = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    return head + b"".join(tail), len(head)


def encode_response(
    model: LoadedModel, request_id: str | None, names: list[str], arrays: list[np.ndarray]
) -> dict[str, Any]:
    specs = {spec.name: spec for spec in model.outputs}
    response: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": [
            {
                "name": name,
                "datatype": specs[name].datatype,
                "shape": list(array.shape),
                "data": array.ravel(),
            }
            for name, array in zip(names, arrays, strict=True)
        ],
    }
    if request_id is not None:
        response["id"] = request_id
    return response


def model_metadata(model: LoadedModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [spec.metadata() for spec in model.inputs],
        "outputs": [spec.metadata() for spec in model.outputs],
        # OIP allows extra fields; these carry the preprocessing hints and identity.
        "parameters": {**model.parameters, "sha256": model.sha256},
    }


# The request as the OpenAPI document declares it (Open Inference Protocol v2, REST, JSON
# tensors); `decode_inputs` holds the checks that go further (the model's shapes and types).
_TENSOR: dict[str, Any] = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"enum": sorted(OIP_TO_NUMPY)},
        "parameters": {"type": "object"},
        "data": {"type": "array", "description": "Row-major, flat or nested."},
    },
}
INFERENCE_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}
