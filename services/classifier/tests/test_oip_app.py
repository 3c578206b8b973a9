"""The classifier app: OIP v2 routes, every malformed request as a 400/413 with an OIP error."""

from __future__ import annotations

import csv
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from servescope.classifier.app import create_app
from servescope.classifier.settings import Settings
from servescope.runtime.health import Health

MODEL_DIR = Path(__file__).resolve().parents[1] / "model"
CARD = json.loads((MODEL_DIR / "model-card.json").read_text())
NAME = CARD["name"]
INFER = f"/v2/models/{NAME}/infer"


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="module")
def client(settings: Settings):
    with TestClient(create_app(settings, Health("classifier", "test"))) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        yield client


def card_tensor(path: Path) -> np.ndarray:
    norm = CARD["input"]["normalisation"]
    q = np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
    return (q.astype(np.float32) / np.float32(255) - np.float32(norm["mean"])) / np.float32(
        norm["std"]
    )


def three_heldout_digits() -> tuple[np.ndarray, list[int]]:
    """Three held-out images with different labels, from classes the card says are all right."""
    perfect = {int(k) for k, v in CARD["metrics"]["per_class_accuracy"].items() if v == 1.0}
    chosen: dict[int, Path] = {}
    with (MODEL_DIR / "heldout" / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            label = int(row["label"])
            if label in perfect and label not in chosen:
                chosen[label] = MODEL_DIR / "heldout" / row["file"]
            if len(chosen) == 3:
                break
    labels = list(chosen)
    batch = np.stack([card_tensor(chosen[label])[np.newaxis] for label in labels])
    return batch, labels


def request(batch: np.ndarray, **extra) -> dict:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
        ],
        **extra,
    }


ONE = np.zeros((1, 1, 8, 8), dtype=np.float32)


# --- valid inference ---------------------------------------------------------------------


def test_batch_of_three_matches_labels_and_onnxruntime(client: TestClient) -> None:
    batch, labels = three_heldout_digits()
    assert batch.shape == (3, 1, 8, 8)
    response = client.post(INFER, json=request(batch, id="req-42"))
    assert response.status_code == 200
    answer = response.json()
    assert answer["model_name"] == NAME
    assert answer["model_version"] == CARD["version"]
    assert answer["id"] == "req-42"
    (output,) = answer["outputs"]
    assert output["name"] == CARD["output"]["name"]
    assert output["datatype"] == "FP32"
    assert output["shape"] == [3, 10]
    logits = np.asarray(output["data"], dtype=np.float32).reshape(3, 10)
    assert list(logits.argmax(axis=1)) == labels
    session = ort.InferenceSession(
        str(MODEL_DIR / "digits-cnn.onnx"), providers=["CPUExecutionProvider"]
    )
    (direct,) = session.run(None, {"input": batch})
    np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-5)


def test_id_is_absent_unless_sent_as_a_string(client: TestClient) -> None:
    assert "id" not in client.post(INFER, json=request(ONE)).json()
    assert "id" not in client.post(INFER, json=request(ONE, id=123)).json()


def test_requested_output_by_name(client: TestClient) -> None:
    response = client.post(INFER, json=request(ONE, outputs=[{"name": "logits"}]))
    assert response.status_code == 200
    assert [o["name"] for o in response.json()["outputs"]] == ["logits"]


def test_nested_data_arrays_are_accepted(client: TestClient) -> None:
    batch, labels = three_heldout_digits()
    body = request(batch)
    body["inputs"][0]["data"] = batch.tolist()
    response = client.post(INFER, json=body)
    assert response.status_code == 200
    logits = np.asarray(response.json()["outputs"][0]["data"]).reshape(3, 10)
    assert list(logits.argmax(axis=1)) == labels


def test_largest_allowed_batch_runs(client: TestClient, settings: Settings) -> None:
    batch = np.zeros((settings.max_batch_size, 1, 8, 8), dtype=np.float32)
    response = client.post(INFER, json=request(batch))
    assert response.status_code == 200
    assert response.json()["outputs"][0]["shape"] == [settings.max_batch_size, 10]


def test_an_empty_batch_answers_an_empty_output(client: TestClient) -> None:
    """Found by a fuzzer: shape [0,1,8,8] with no data was a 500 from the drift window."""
    response = client.post(INFER, json=request(np.zeros((0, 1, 8, 8), dtype=np.float32)))
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert (output["shape"], output["data"]) == ([0, 10], [])
    assert client.get("/readyz").status_code == 200


def test_versioned_infer_route(client: TestClient) -> None:
    ok = client.post(f"/v2/models/{NAME}/versions/1/infer", json=request(ONE))
    assert ok.status_code == 200
    wrong = client.post(f"/v2/models/{NAME}/versions/2/infer", json=request(ONE))
    assert wrong.status_code == 404
    assert wrong.json()["kind"] == "unknown_model"


def test_infer_on_an_unknown_model_is_404(client: TestClient) -> None:
    response = client.post("/v2/models/resnet50/infer", json=request(ONE))
    assert response.status_code == 404
    body = response.json()
    assert body["kind"] == "unknown_model"
    assert NAME in body["error"]  # says what is served instead


# --- malformed requests ------------------------------------------------------------------


def _tensor(**overrides) -> dict:
    tensor = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
    tensor.update(overrides)
    return {"inputs": [tensor]}


BAD_REQUESTS = {
    "empty body": (b"", "invalid_json", "empty"),
    "invalid json": (b'{"inputs": [', "invalid_json", "JSON"),
    "json array": (b"[1, 2, 3]", "invalid_json", "object"),
    "json string": (b'"inputs"', "invalid_json", "object"),
    "missing inputs": (b"{}", "invalid_tensor", "inputs"),
    "empty inputs": (b'{"inputs": []}', "invalid_tensor", "inputs"),
    "inputs not a list": (b'{"inputs": {"name": "input"}}', "invalid_tensor", "inputs"),
    "input not an object": (b'{"inputs": [42]}', "invalid_tensor", "object"),
    "unknown input": (_tensor(name="pixels"), "invalid_tensor", "pixels"),
    "nameless input": (_tensor(name=None), "invalid_tensor", "unknown input"),
    "wrong datatype": (_tensor(datatype="FP64"), "invalid_tensor", "FP64"),
    "missing datatype": (_tensor(datatype=None), "invalid_tensor", "datatype"),
    "wrong shape": (_tensor(shape=[1, 1, 8, 9], data=[0.0] * 72), "invalid_tensor", "[1, 1, 8, 9]"),
    "wrong channels": (
        _tensor(shape=[1, 2, 8, 8], data=[0.0] * 128),
        "invalid_tensor",
        "[1, 2, 8, 8]",
    ),
    "wrong rank": (_tensor(shape=[1, 64]), "invalid_tensor", "[1, 64]"),
    "negative dimension": (_tensor(shape=[-1, 1, 8, 8]), "invalid_tensor", "non-negative"),
    "shape not a list": (_tensor(shape="1x1x8x8"), "invalid_tensor", "shape"),
    "too few elements": (_tensor(data=[0.0] * 63), "invalid_tensor", "63 elements"),
    "too many elements": (_tensor(data=[0.0] * 65), "invalid_tensor", "65 elements"),
    "non-numeric data": (_tensor(data=["seven"] * 64), "invalid_tensor", "FP32"),
    "null in data": (_tensor(data=[None] * 64), "invalid_tensor", "null"),
    "one null in data": (_tensor(data=[0.0] * 63 + [None]), "invalid_tensor", "null"),
    "number beyond FP32": (_tensor(data=[1e39] * 64), "invalid_tensor", "out of range"),
    "ragged data": (_tensor(data=[[0.0] * 8] * 7 + [[0.0] * 7]), "invalid_tensor", "FP32"),
    "data not an array": (_tensor(data="0 0 0"), "invalid_tensor", "data"),
    "unknown output": ({**_tensor(), "outputs": [{"name": "probs"}]}, "invalid_tensor", "probs"),
    "outputs not a list": ({**_tensor(), "outputs": "logits"}, "invalid_tensor", "outputs"),
}


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_malformed_requests_are_400_with_an_oip_error(client: TestClient, case: str) -> None:
    payload, kind, mentions = BAD_REQUESTS[case]
    content = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    response = client.post(INFER, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert isinstance(body["error"], str)
    assert body["kind"] == kind
    assert body["stage"] == "infer"
    assert mentions in body["error"]


def test_batch_over_the_limit_is_400(client: TestClient, settings: Settings) -> None:
    too_many = settings.max_batch_size + 1
    response = client.post(INFER, json=_tensor(shape=[too_many, 1, 8, 8], data=[]))
    assert response.status_code == 400
    body = response.json()
    assert body["kind"] == "batch_too_large"
    assert str(too_many) in body["error"]
    assert str(settings.max_batch_size) in body["error"]


def test_body_over_the_limit_is_413(client: TestClient, settings: Settings) -> None:
    response = client.post(
        INFER,
        content=b" " * (settings.max_request_bytes + 1),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    body = response.json()
    assert body["kind"] == "body_too_large"
    assert isinstance(body["error"], str)


# --- metadata and health -----------------------------------------------------------------


def test_server_metadata(client: TestClient, settings: Settings) -> None:
    response = client.get("/v2")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "servescope-classifier"
    assert body["version"] == settings.version
    assert body["extensions"] == ["binary_tensor_data"]


def test_server_live_and_ready(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True}
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["status"] == "ready"


@pytest.mark.parametrize("path", [f"/v2/models/{NAME}", f"/v2/models/{NAME}/versions/1"])
def test_model_metadata_matches_the_card(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    body = response.json()
    card_in, card_out = CARD["input"], CARD["output"]
    assert body["name"] == NAME
    assert body["versions"] == [CARD["version"]]
    assert body["platform"] == "onnxruntime_onnx"
    assert body["inputs"] == [
        {"name": card_in["name"], "datatype": card_in["datatype"], "shape": card_in["shape"]}
    ]
    assert body["outputs"] == [
        {"name": card_out["name"], "datatype": card_out["datatype"], "shape": card_out["shape"]}
    ]
    params = body["parameters"]
    assert params["sha256"] == CARD["sha256"]
    assert float(params["normalize_mean"]) == pytest.approx(card_in["normalisation"]["mean"])
    assert float(params["normalize_std"]) == pytest.approx(card_in["normalisation"]["std"])


@pytest.mark.parametrize(
    "path", [f"/v2/models/{NAME}/ready", f"/v2/models/{NAME}/versions/1/ready"]
)
def test_model_ready(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == {"name": NAME, "ready": True}


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/resnet50",
        "/v2/models/resnet50/ready",
        f"/v2/models/{NAME}/versions/2",
        f"/v2/models/{NAME}/versions/2/ready",
    ],
)
def test_unknown_model_or_version_is_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    body = response.json()
    assert body["kind"] == "unknown_model"
    assert isinstance(body["error"], str)


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    assert client.get("/v3").json()["kind"] == "not_found"
    wrong = client.get(INFER)
    assert wrong.status_code == 405
    assert wrong.json()["kind"] == "method_not_allowed"


# --- a model that cannot load ------------------------------------------------------------


def test_unloadable_model_marks_health_fatal(tmp_path: Path) -> None:
    missing = tmp_path / "gone.onnx"
    health = Health("classifier", "test")
    with TestClient(create_app(Settings(model_path=missing), health)) as client:
        wait_until(lambda: health.fatal is not None)
        assert str(missing) in health.fatal
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["waiting_for"] == ["model_loaded"]
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/health/ready").json() == {"ready": False}
        not_loaded = client.post(INFER, json=_tensor())
        assert not_loaded.status_code == 503
        assert not_loaded.json()["kind"] == "model_not_ready"
        assert client.get(f"/v2/models/{NAME}").status_code == 503


def _hostile(**overrides: object) -> bytes:
    tensor = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}
    return orjson.dumps({"inputs": [{**tensor, **overrides}]})


def _raw(first: str) -> bytes:
    head = '{"inputs":[{"name":"input","shape":[1,1,8,8],"datatype":"FP32","data":['
    return (head + first + ",0" * 63 + "]}]}").encode()


HOSTILE = {
    "a huge shape with little data": (
        _hostile(shape=[10**9, 1, 8, 8], data=[1, 2]),
        "batch_too_large",
    ),
    "a shape of 2^62 elements": (_hostile(shape=[2**31, 2**31, 8, 8], data=[1]), "invalid_tensor"),
    "shape and data disagreeing": (_hostile(shape=[2, 1, 8, 8]), "invalid_tensor"),
    "NaN": (_raw("NaN"), "invalid_json"),
    "a number past float64": (_raw("1e400"), "invalid_json"),
    "a number past float32": (_raw("1e39"), "invalid_tensor"),
    "a wrong datatype": (_hostile(datatype="BYTES", data=["a"] * 64), "invalid_tensor"),
    "strings for numbers": (_hostile(data=["a"] * 64), "invalid_tensor"),
    "ragged nesting": (_hostile(data=[[0] * 63, [0, [0]]]), "invalid_tensor"),
    "JSON nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_tensor_is_a_counted_400_that_allocates_nothing_it_claims(
    client: TestClient, case: str
) -> None:
    """Each gets a clear 400 and is counted; none allocates in proportion to what it claims
    (the 10^9 x 64 floats claimed would be 256 GB)."""
    body, kind = HOSTILE[case]

    def rejected() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(f'servescope_rejected_inputs_total{{reason="{kind}"}} '):
                return float(line.split()[-1])
        return 0.0

    before = rejected()
    tracemalloc.start()
    try:
        response = client.post(INFER, content=body, headers={"content-type": "application/json"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 400, response.text
    assert response.json()["kind"] == kind
    assert rejected() == before + 1
    assert peak < 32 * 2**20, f"{case}: {peak / 2**20:.0f} MiB allocated"


def _binary_request(batch: np.ndarray, **parameters: object) -> tuple[bytes, dict[str, str]]:
    raw = batch.astype("<f4").tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            **parameters,
        }
    )
    headers = {"inference-header-content-length": str(len(head))}
    return head + raw, headers


def test_binary_tensor_data_in_and_out_matches_json(client: TestClient) -> None:
    batch, labels = three_heldout_digits()
    as_json = client.post(INFER, json=request(batch)).json()["outputs"][0]["data"]
    body, headers = _binary_request(batch)
    answered = client.post(INFER, content=body, headers=headers)
    assert answered.status_code == 200, answered.text
    assert answered.json()["outputs"][0]["data"] == pytest.approx(as_json)

    body, headers = _binary_request(
        batch, outputs=[{"name": "logits", "parameters": {"binary_data": True}}]
    )
    answered = client.post(INFER, content=body, headers=headers)
    assert answered.status_code == 200, answered.text
    assert answered.headers["content-type"] == "application/octet-stream"
    length = int(answered.headers["inference-header-content-length"])
    head = orjson.loads(answered.content[:length])
    (output,) = head["outputs"]
    assert "data" not in output and output["shape"] == [3, 10]
    assert output["parameters"]["binary_data_size"] == 3 * 10 * 4
    logits = np.frombuffer(answered.content[length:], dtype="<f4").reshape(3, 10)
    assert logits.ravel().tolist() == pytest.approx(as_json)
    assert list(logits.argmax(axis=1)) == labels


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"inference-header-content-length": "99999"}, "outside a body"),
        ({"inference-header-content-length": "x"}, "whole number of bytes"),
        ({"tail": b"\x00" * 4}, "binary bytes after the last binary input"),
        ({"tail": -4}, "binary_data_size 256"),
    ],
    ids=["header-past-the-body", "header-not-a-number", "bytes-left-over", "bytes-missing"],
)
def test_binary_tensor_data_that_does_not_add_up_is_a_400(
    client: TestClient, change: dict[str, object], says: str
) -> None:
    body, headers = _binary_request(np.zeros((1, 1, 8, 8), dtype=np.float32))
    tail = change.pop("tail", None)
    if isinstance(tail, bytes):
        body += tail
    elif isinstance(tail, int):
        body = body[:tail]
    headers.update({k: str(v) for k, v in change.items()})
    answered = client.post(INFER, content=body, headers=headers)
    assert answered.status_code == 400, answered.text
    assert answered.json()["kind"] == "invalid_tensor"
    assert says in answered.json()["error"]
