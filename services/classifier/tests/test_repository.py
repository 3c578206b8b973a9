"""The classifier serving a model repository: every model by name, the index, memory, refusals."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from servescope.classifier.app import create_app
from servescope.classifier.repository import ModelRepository, RepositoryError, scan
from servescope.classifier.settings import Settings
from servescope.runtime.health import Health
from servescope.telemetry.contract import load_contract

MODEL_DIR = Path(__file__).resolve().parents[1] / "model"
CARD = json.loads((MODEL_DIR / "model-card.json").read_text())
LINEAR = "digits-linear"


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.normal(0, 0.3, (64, 10)).astype(np.float32), rng.normal(0, 1, 10).astype(np.float32)


def linear_onnx() -> bytes:
    """A second model with the bundled input and output: logits = flatten(input) @ W + b."""
    w, b = weights()
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "shape"], ["flat"]),
            helper.make_node("Gemm", ["flat", "W", "b"], ["logits"]),
        ],
        "digits_linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            numpy_helper.from_array(np.array([-1, 64], np.int64), "shape"),
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(b, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def add_model(repo: Path, name: str, data: bytes, **card: Any) -> Path:
    folder = repo / name
    folder.mkdir(parents=True)
    (folder / f"{name}.onnx").write_bytes(data)
    full = {
        **CARD,
        "name": name,
        "file": f"{name}.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        **card,
    }
    (folder / "model-card.json").write_text(json.dumps(full))
    return folder


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repository")
    add_model(repo, CARD["name"], (MODEL_DIR / CARD["file"]).read_bytes())
    add_model(repo, LINEAR, linear_onnx(), version="3")
    (repo / "repository.json").write_text("{}")  # not a model: ignored
    return repo


@pytest.fixture(scope="module")
def client(repo: Path):
    health = Health("classifier", "test")
    with TestClient(create_app(Settings(model_repository=repo), health)) as client:
        wait_until(lambda: health.ready or health.fatal is not None)
        assert health.fatal is None
        yield client


def tensor(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }


def metric_series(client: TestClient, metric: str) -> dict[str, float]:
    found = {}
    for line in client.get("/metrics").text.splitlines():
        match = re.match(rf'{metric}\{{.*?model_name="([^"]+)".*?\}} (\S+)$', line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def test_index_lists_every_model_ready(client: TestClient) -> None:
    expected = [
        {"name": CARD["name"], "version": CARD["version"], "state": "READY"},
        {"name": LINEAR, "version": "3", "state": "READY"},
    ]
    assert client.post("/v2/repository/index").json() == expected
    assert client.post("/v2/repository/index", json={"ready": True}).json() == expected
    assert client.get("/v2/repository/index").json() == expected


def test_each_model_has_metadata_and_is_ready(client: TestClient) -> None:
    for name, version in ((CARD["name"], CARD["version"]), (LINEAR, "3")):
        metadata = client.get(f"/v2/models/{name}").json()
        assert (metadata["name"], metadata["versions"]) == (name, [version])
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
        assert client.get(f"/v2/models/{name}/versions/{version}/ready").json()["ready"] is True
    assert client.get(f"/v2/models/{LINEAR}/versions/1").status_code == 404


def test_infer_runs_the_named_model(client: TestClient) -> None:
    x = np.random.default_rng(5).normal(0, 1, (2, 1, 8, 8)).astype(np.float32)
    w, b = weights()
    answer = client.post(f"/v2/models/{LINEAR}/infer", json=tensor(x))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"]) == (LINEAR, "3")
    got = np.asarray(body["outputs"][0]["data"], np.float32).reshape(2, 10)
    np.testing.assert_allclose(got, x.reshape(2, 64) @ w + b, rtol=1e-5, atol=1e-5)
    cnn = client.post(f"/v2/models/{CARD['name']}/infer", json=tensor(x)).json()
    assert cnn["model_name"] == CARD["name"]
    assert not np.allclose(cnn["outputs"][0]["data"], got.ravel())


def test_unknown_model_is_404_pointing_at_the_index(client: TestClient) -> None:
    answer = client.post("/v2/models/digits-nope/infer", json=tensor(np.zeros((1, 1, 8, 8))))
    assert answer.status_code == 404
    body = answer.json()
    assert body["kind"] == "unknown_model"
    assert "2 models" in body["error"]
    assert "/v2/repository/index" in body["error"]


def test_metrics_per_model(client: TestClient) -> None:
    names = {CARD["name"], LINEAR}
    assert set(metric_series(client, "servescope_model_info")) == names
    assert set(metric_series(client, "servescope_model_load_duration_seconds")) == names
    memory = metric_series(client, "servescope_model_memory_bytes")
    assert set(memory) == names
    assert memory[CARD["name"]] > 0
    assert all(v >= 0 for v in memory.values())
    before = metric_series(client, "servescope_inference_duration_seconds_count").get(LINEAR, 0)
    client.post(f"/v2/models/{LINEAR}/infer", json=tensor(np.zeros((1, 1, 8, 8))))
    after = metric_series(client, "servescope_inference_duration_seconds_count")[LINEAR]
    assert after == before + 1


def test_one_drift_window_takes_every_model_with_the_same_reference(client: TestClient) -> None:
    def window() -> float:
        text = client.get("/metrics").text
        return float(re.search(r"^servescope_drift_window_inputs (\S+)$", text, re.M).group(1))

    before = window()
    client.post(f"/v2/models/{LINEAR}/infer", json=tensor(np.zeros((1, 1, 8, 8))))
    assert window() == min(before + 1, Settings().drift_window)


# --- repositories the classifier refuses --------------------------------------------------


def fatal(settings: Settings) -> str:
    health = Health("classifier", "test")
    with TestClient(create_app(settings, health)) as client:
        wait_until(lambda: health.fatal is not None or health.ready)
        assert not health.ready
        assert client.get("/readyz").status_code == 503
    assert health.fatal is not None
    return health.fatal


def test_a_file_that_is_not_its_cards_is_refused(tmp_path: Path) -> None:
    add_model(tmp_path, LINEAR, linear_onnx(), sha256="0" * 64)
    assert "its model card says" in fatal(Settings(model_repository=tmp_path))


def test_a_different_model_under_the_default_name_is_refused(tmp_path: Path) -> None:
    add_model(tmp_path, CARD["name"], linear_onnx())
    assert "is not the default model" in fatal(Settings(model_repository=tmp_path))


def test_a_card_for_another_folder_is_refused(tmp_path: Path) -> None:
    folder = add_model(tmp_path, LINEAR, linear_onnx())
    folder.rename(tmp_path / "digits-other")
    assert "its folder is" in fatal(Settings(model_repository=tmp_path))


def test_more_models_than_the_contract_allows_are_refused(tmp_path: Path) -> None:
    data = linear_onnx()
    limit = load_contract().max_models
    first = add_model(tmp_path, "digits-m0", data)
    for i in range(1, limit):  # with the default model, one more than allowed
        shutil.copytree(first, tmp_path / f"digits-m{i}")
        card = json.loads((first / "model-card.json").read_text())
        (tmp_path / f"digits-m{i}" / "model-card.json").write_text(
            json.dumps({**card, "name": f"digits-m{i}"})
        )
    message = fatal(Settings(model_repository=tmp_path))
    assert f"{limit + 1} models" in message
    assert f"max_models of {limit}" in message


def test_a_missing_repository_is_refused(tmp_path: Path) -> None:
    assert "cannot read model repository" in fatal(Settings(model_repository=tmp_path / "gone"))


def test_repository_without_a_default_cannot_plan(tmp_path: Path) -> None:
    add_model(tmp_path, LINEAR, linear_onnx())
    entries = scan(tmp_path, load_contract().label_rules["model_name"].allows)
    assert [e.name for e in entries] == [LINEAR]
    with pytest.raises(RepositoryError):
        ModelRepository(10).plan(entries)


def test_without_a_repository_only_the_default_is_indexed() -> None:
    health = Health("classifier", "test")
    with TestClient(create_app(Settings(), health)) as client:
        wait_until(lambda: health.ready)
        assert client.get("/v2/repository/index").json() == [
            {"name": CARD["name"], "version": CARD["version"], "state": "READY"}
        ]
        assert set(metric_series(client, "servescope_model_memory_bytes")) == {CARD["name"]}
