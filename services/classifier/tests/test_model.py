"""model.py: loading the bundled ONNX model and refusing files that are not models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from servescope.classifier.model import LoadedModel, ModelLoadError, TensorSpec, load_model

MODEL_DIR = Path(__file__).resolve().parents[1] / "model"
MODEL = MODEL_DIR / "digits-cnn.onnx"
CARD = json.loads((MODEL_DIR / "model-card.json").read_text())


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model(MODEL)


def test_identity_comes_from_the_file(model: LoadedModel) -> None:
    assert model.name == CARD["name"] == "digits-cnn"
    assert model.version == CARD["version"] == "1"
    assert model.path == MODEL


def test_sha256_and_size_match_the_file_and_the_card(model: LoadedModel) -> None:
    data = MODEL.read_bytes()
    assert model.sha256 == hashlib.sha256(data).hexdigest()
    assert model.sha256 == CARD["sha256"]
    assert model.size_bytes == len(data) == CARD["size_bytes"]


def test_tensor_specs_match_the_card(model: LoadedModel) -> None:
    card_in, card_out = CARD["input"], CARD["output"]
    assert model.inputs == [
        TensorSpec(card_in["name"], card_in["datatype"], tuple(card_in["shape"]))
    ]
    assert model.outputs == [
        TensorSpec(card_out["name"], card_out["datatype"], tuple(card_out["shape"]))
    ]
    assert model.input_spec("input") == model.inputs[0]
    assert model.input_spec("nope") is None
    assert model.inputs[0].metadata() == {
        "name": card_in["name"],
        "datatype": card_in["datatype"],
        "shape": card_in["shape"],
    }


def test_parameters_carry_the_preprocessing_hints(model: LoadedModel) -> None:
    norm = CARD["input"]["normalisation"]
    params = model.parameters
    assert float(params["normalize_mean"]) == pytest.approx(norm["mean"], rel=1e-12)
    assert float(params["normalize_std"]) == pytest.approx(norm["std"], rel=1e-12)
    assert float(params["input_scale"]) == pytest.approx(norm["scale"], rel=1e-12)
    assert json.loads(params["labels"]) == CARD["labels"]
    # Identity is not repeated among the parameters.
    assert "model_name" not in params
    assert "model_version" not in params


def test_name_and_version_can_be_overridden() -> None:
    model = load_model(MODEL, name="digits", version="7")
    assert (model.name, model.version) == ("digits", "7")


def test_load_time_is_recorded(model: LoadedModel) -> None:
    assert model.load_seconds > 0


def test_run_returns_one_row_of_logits_per_image(model: LoadedModel) -> None:
    batch = np.zeros((5, 1, 8, 8), dtype=np.float32)
    (logits,) = model.run({"input": batch}, ["logits"])
    assert logits.shape == (5, 10)
    assert logits.dtype == np.float32
    # Identical inputs give identical rows.
    assert np.all(logits == logits[0])


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.onnx"
    with pytest.raises(ModelLoadError) as caught:
        load_model(missing)
    assert str(missing) in str(caught.value)


@pytest.mark.parametrize("content", [b"", b"this is not an onnx model\n", b"\x08\x07" * 100])
def test_non_onnx_file_names_the_path(tmp_path: Path, content: bytes) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(content)
    with pytest.raises(ModelLoadError) as caught:
        load_model(bogus)
    assert str(bogus) in str(caught.value)


def test_a_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_model(tmp_path)
    assert str(tmp_path) in str(caught.value)


def _identity_model(path: Path, elem_type: int, model_version: int = 0) -> Path:
    x = helper.make_tensor_value_info("x", elem_type, ["batch", 3])
    y = helper.make_tensor_value_info("y", elem_type, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    proto.model_version = model_version
    onnx.save(proto, path)
    return path


def test_a_model_without_servescope_metadata_is_named_after_its_file(tmp_path: Path) -> None:
    model = load_model(_identity_model(tmp_path / "plain-identity.onnx", TensorProto.FLOAT, 4))
    assert model.name == "plain-identity"
    assert model.version == "4"
    assert model.parameters == {}
    assert model.inputs == [TensorSpec("x", "FP32", (-1, 3))]
    assert model.outputs == [TensorSpec("y", "FP32", (-1, 3))]
    (out,) = model.run({"x": np.arange(6, dtype=np.float32).reshape(2, 3)}, ["y"])
    np.testing.assert_array_equal(out, np.arange(6, dtype=np.float32).reshape(2, 3))


def test_version_defaults_to_1(tmp_path: Path) -> None:
    model = load_model(_identity_model(tmp_path / "m.onnx", TensorProto.INT64))
    assert model.version == "1"
    assert model.inputs[0].datatype == "INT64"


def test_a_tensor_type_oip_cannot_carry_is_refused(tmp_path: Path) -> None:
    path = _identity_model(tmp_path / "strings.onnx", TensorProto.STRING)
    with pytest.raises(ModelLoadError) as caught:
        load_model(path)
    assert "'x'" in str(caught.value)
