"""The classifier serves any ONNX model from a path: a second, different model built here."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from servescope.cli.local.services import LocalStack

# A hang fails here, with every started process stopped, instead of stalling CI.
pytestmark = pytest.mark.timeout(90)

FEATURES = 64
CLASSES = 10


def _weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    weights = rng.normal(0.0, 0.5, (FEATURES, CLASSES)).astype(np.float32)
    bias = rng.normal(0.0, 1.0, CLASSES).astype(np.float32)
    return weights, bias


def _linear_model(path: Path) -> None:
    """Logistic regression as one Gemm: scores = pixels @ W + b, input [N, 64]."""
    weights, bias = _weights()
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["pixels", "W", "b"], ["scores"], name="linear")],
        "digits_linear",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="servescope-tests"
    )
    model.ir_version = 8
    helper.set_model_props(
        model,
        {"servescope.model_name": "digits-linear", "servescope.model_version": "7"},
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.mark.slow
def test_classifier_serves_a_second_model(start_stack, tmp_path: Path) -> None:
    model_path = tmp_path / "digits-linear.onnx"
    _linear_model(model_path)
    stack: LocalStack = start_stack(
        env={"classifier": {"SERVESCOPE_MODEL_PATH": str(model_path)}}, names=("classifier",)
    )
    with httpx.Client(base_url=stack.services["classifier"].url, timeout=10) as client:
        metadata = client.get("/v2/models/digits-linear")
        assert metadata.status_code == 200, metadata.text
        body = metadata.json()
        assert body["name"] == "digits-linear"
        assert body["versions"] == ["7"]
        assert body["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, FEATURES]}]
        assert body["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, CLASSES]}]
        assert client.get("/v2/models/digits-linear/ready").json()["ready"] is True

        rng = np.random.default_rng(11)
        pixels = rng.uniform(0.0, 1.0, (3, FEATURES)).astype(np.float32)
        answer = client.post(
            "/v2/models/digits-linear/infer",
            json={
                "id": "second-model-1",
                "inputs": [
                    {
                        "name": "pixels",
                        "shape": list(pixels.shape),
                        "datatype": "FP32",
                        "data": pixels.ravel().tolist(),
                    }
                ],
            },
        )
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["model_name"] == "digits-linear"
        assert result["model_version"] == "7"
        assert result["id"] == "second-model-1"
        [output] = result["outputs"]
        assert output["name"] == "scores"
        assert output["datatype"] == "FP32"
        assert output["shape"] == [3, CLASSES]
        weights, bias = _weights()
        expected = pixels.astype(np.float64) @ weights.astype(np.float64) + bias
        got = np.asarray(output["data"], dtype=np.float64).reshape(3, CLASSES)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

        # The bundled model's name is not served by this process.
        for response in (
            client.get("/v2/models/digits-cnn"),
            client.post("/v2/models/digits-cnn/infer", json={"inputs": []}),
            client.get("/v2/models/digits-linear/versions/1"),
        ):
            assert response.status_code == 404, response.text
            assert isinstance(response.json()["error"], str)
            assert response.json()["error"]

        # A tensor of the bundled model's shape is refused, not computed on.
        wrong = client.post(
            "/v2/models/digits-linear/infer",
            json={
                "inputs": [
                    {
                        "name": "pixels",
                        "shape": [1, 1, 8, 8],
                        "datatype": "FP32",
                        "data": [0.0] * FEATURES,
                    }
                ]
            },
        )
        assert wrong.status_code == 400, wrong.text
        assert isinstance(wrong.json()["error"], str)
        assert "shape" in wrong.json()["error"]
        narrow = client.post(
            "/v2/models/digits-linear/infer",
            json={
                "inputs": [
                    {"name": "pixels", "shape": [1, 63], "datatype": "FP32", "data": [0.0] * 63}
                ]
            },
        )
        assert narrow.status_code == 400, narrow.text
        assert isinstance(narrow.json()["error"], str)
    assert stack.services["classifier"].running()


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["missing", "not_onnx"])
def test_unreadable_model_exits_non_zero(start_stack, tmp_path: Path, problem: str) -> None:
    model_path = tmp_path / "models" / f"{problem}.onnx"
    if problem == "not_onnx":
        model_path.parent.mkdir(parents=True)
        model_path.write_bytes(b"this is not an ONNX protobuf at all" * 10)
    stack = start_stack.unstarted(env={"classifier": {"SERVESCOPE_MODEL_PATH": str(model_path)}})
    classifier = stack.services["classifier"]
    classifier.launch()
    assert classifier.process is not None
    code = classifier.process.wait(timeout=30)
    assert code != 0
    log = classifier.log_path.read_text(errors="replace")
    assert str(model_path) in log, log[-2000:]
    assert "model_load_failed" in log
