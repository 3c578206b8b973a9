"""The postprocess app: labels and calibration from model cards, and its refusals."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from servescope.postprocess.app import create_app
from servescope.postprocess.settings import Settings
from servescope.runtime.health import Health

CARD_PATH = Path(__file__).resolve().parents[2] / "classifier" / "model" / "model-card.json"
CARD = json.loads(CARD_PATH.read_text())
T = CARD["calibration"]["temperature"]
LOGITS = [0.3, -1.2, 2.5, 0.0, 4.1, -0.7, 1.9, 0.2, -2.2, 3.3]


def softmax(logits: list[float], temperature: float) -> list[float]:
    top = max(logits)
    exps = [math.exp((x - top) / temperature) for x in logits]
    return [e / sum(exps) for e in exps]


def ranking(logits: list[float]) -> list[int]:
    return sorted(range(len(logits)), key=lambda i: (-logits[i], i))


@pytest.fixture(scope="module")
def client():
    settings = Settings()
    assert settings.model_cards == [CARD_PATH]
    health = Health("postprocess", "test")
    with TestClient(create_app(settings, health)) as client:
        assert health.fatal is None
        yield client


def test_ready_once_the_cards_are_loaded(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


def test_bundled_card_gives_labels_and_calibration(client: TestClient) -> None:
    response = client.post("/v1/postprocess", json={"model_name": CARD["name"], "logits": LOGITS})
    assert response.status_code == 200
    body = response.json()
    order = ranking(LOGITS)
    probabilities = softmax(LOGITS, T)
    assert body["class_index"] == order[0]
    assert body["label"] == CARD["labels"][order[0]]
    assert body["confidence"] == pytest.approx(probabilities[order[0]], abs=5e-7)
    assert body["calibrated"] is True
    assert body["label_source"] == "model_card"
    assert len(body["top_k"]) == Settings().default_top_k
    assert [t["class_index"] for t in body["top_k"]] == order[: len(body["top_k"])]
    for entry in body["top_k"]:
        assert entry["label"] == CARD["labels"][entry["class_index"]]
        assert entry["probability"] == pytest.approx(probabilities[entry["class_index"]], abs=5e-7)


def test_calibration_sharpens_the_raw_softmax(client: TestClient) -> None:
    body = client.post(
        "/v1/postprocess", json={"model_name": CARD["name"], "logits": LOGITS}
    ).json()
    raw = softmax(LOGITS, 1.0)[ranking(LOGITS)[0]]
    assert T < 1
    assert body["confidence"] > raw


def test_top_k_is_honoured(client: TestClient) -> None:
    response = client.post(
        "/v1/postprocess", json={"model_name": CARD["name"], "logits": LOGITS, "top_k": 7}
    )
    assert [t["class_index"] for t in response.json()["top_k"]] == ranking(LOGITS)[:7]


def test_unknown_model_falls_back_to_index_labels(client: TestClient) -> None:
    logits = [1.0, 5.0, 2.0]
    response = client.post("/v1/postprocess", json={"model_name": "mystery", "logits": logits})
    assert response.status_code == 200
    body = response.json()
    assert body["label"] == "1"
    assert body["class_index"] == 1
    assert body["calibrated"] is False
    assert body["label_source"] == "class_index"
    assert body["confidence"] == pytest.approx(softmax(logits, 1.0)[1], abs=5e-7)
    assert [t["label"] for t in body["top_k"]] == ["1", "2", "0"]


def test_known_model_with_another_class_count_uses_index_labels(client: TestClient) -> None:
    response = client.post(
        "/v1/postprocess", json={"model_name": CARD["name"], "logits": [0.0, 1.0]}
    )
    assert response.status_code == 200
    assert response.json()["label_source"] == "class_index"


@pytest.mark.parametrize(
    "logits_json", ["[1.0, NaN, 2.0]", "[Infinity, 1.0]", "[-Infinity, 0.0]", "[1e999, 0.0]"]
)
def test_non_finite_logits_are_422(client: TestClient, logits_json: str) -> None:
    content = '{"model_name": "digits-cnn", "logits": ' + logits_json + "}"
    response = client.post(
        "/v1/postprocess", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["kind"] == "invalid_logits"
    assert isinstance(body["error"], str)


@pytest.mark.parametrize(
    ("payload", "mentions"),
    [
        ({}, "model_name"),
        ({"model_name": "digits-cnn"}, "logits"),
        ({"logits": [1.0]}, "model_name"),
        ({"model_name": "digits-cnn", "logits": []}, "logits"),
        ({"model_name": "digits-cnn", "logits": ["high", "low"]}, "logits"),
        ({"model_name": "digits-cnn", "logits": [1.0], "top_k": 0}, "top_k"),
        ({"model_name": "digits-cnn", "logits": [1.0], "top_k": 101}, "top_k"),
    ],
)
def test_invalid_requests_are_422_in_the_shared_shape(
    client: TestClient, payload: dict, mentions: str
) -> None:
    response = client.post("/v1/postprocess", json=payload)
    assert response.status_code == 422
    body = response.json()
    assert set(body) == {"error", "kind", "stage"}
    assert body["kind"] == "invalid_request"
    assert body["stage"] == "postprocess"
    assert mentions in body["error"]


def test_invalid_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/v1/postprocess", content=b"{oops", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["kind"] == "invalid_request"


def _card(path: Path, **fields) -> Path:
    path.write_text(json.dumps({"name": "animals", "version": "3", **fields}))
    return path


def test_labels_and_temperature_come_from_a_custom_card(tmp_path: Path) -> None:
    card = _card(
        tmp_path / "animals.json",
        labels=["cat", "dog", "eel"],
        calibration={"temperature": 2.0},
    )
    with TestClient(create_app(Settings(model_cards=[card]), Health("p", "t"))) as client:
        logits = [0.5, 0.1, 3.0]
        body = client.post(
            "/v1/postprocess", json={"model_name": "animals", "logits": logits}
        ).json()
    assert body["label"] == "eel"
    assert body["calibrated"] is True
    assert body["label_source"] == "model_card"
    assert body["confidence"] == pytest.approx(softmax(logits, 2.0)[2], abs=5e-7)


def test_card_without_calibration_is_not_calibrated(tmp_path: Path) -> None:
    card = _card(tmp_path / "plain.json", labels=["no", "yes"])
    with TestClient(create_app(Settings(model_cards=[card]), Health("p", "t"))) as client:
        body = client.post(
            "/v1/postprocess", json={"model_name": "animals", "logits": [0.0, 1.0]}
        ).json()
    assert body["label"] == "yes"
    assert body["calibrated"] is False
    assert body["label_source"] == "model_card"


@pytest.mark.parametrize(
    "broken",
    [
        "missing",  # no such file
        "not json",
        '{"name": "x", "version": "1"}',  # no labels
        '{"name": "x", "version": "1", "labels": ["a"], "calibration": {"temperature": "hot"}}',
        "[1, 2, 3]",  # JSON, but not an object
        '{"name": "x", "version": "1", "labels": ["a"], "calibration": "warm"}',
        '{"name": "x", "version": "1", "labels": ["a"], "calibration": {"temperature": 0}}',
        '{"name": "x", "version": "1", "labels": ["a"], "calibration": {"temperature": -1.5}}',
    ],
)
def test_broken_card_makes_health_fatal(tmp_path: Path, broken: str) -> None:
    path = tmp_path / "card.json"
    if broken != "missing":
        path.write_text(broken)
    health = Health("postprocess", "test")
    with TestClient(create_app(Settings(model_cards=[path]), health)) as client:
        assert health.fatal is not None
        assert str(path) in health.fatal
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["waiting_for"] == ["model_cards_loaded"]


def test_broken_card_makes_the_service_exit_1(tmp_path: Path) -> None:
    # The real entry point: the server sees health.fatal and exits non-zero instead of idling.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    missing = tmp_path / "no-card.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVESCOPE_")}
    env |= {"SERVESCOPE_PORT": str(port), "SERVESCOPE_MODEL_CARDS": json.dumps([str(missing)])}
    done = subprocess.run(
        [sys.executable, "-m", "servescope.postprocess"],
        env=env,
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 1, done.stdout[-2000:]
    assert b"model_card_load_failed" in done.stdout
    assert str(missing).encode() in done.stdout


def test_a_body_over_the_limit_is_413_before_parsing(client: TestClient) -> None:
    logits = ",".join(["1.0"] * 400_000)
    response = client.post(
        "/v1/postprocess",
        content=f'{{"model_name": "digits-cnn", "logits": [{logits}]}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["kind"] == "body_too_large"


def test_every_card_of_a_model_repository_answers_for_its_model(tmp_path: Path) -> None:
    """Two models of a repository, each with its own labels and temperature, beside the
    bundled card of model_cards."""
    repo = tmp_path / "models"
    for name, labels, temperature in [
        ("letters", ["x", "y", "z"], 1.0),
        ("colours", ["red", "green", "blue"], 0.5),
    ]:
        (repo / name).mkdir(parents=True)
        _card(
            repo / name / "model-card.json",
            name=name,
            labels=labels,
            calibration={"temperature": temperature},
        )
    settings = Settings(model_cards=[CARD_PATH], model_repository=repo)
    logits = [0.2, 2.0, 1.0]
    with TestClient(create_app(settings, Health("p", "t"))) as client:
        assert client.get("/readyz").status_code == 200
        answers = {
            name: client.post("/v1/postprocess", json={"model_name": name, "logits": logits})
            for name in ("letters", "colours")
        }
        bundled = client.post(
            "/v1/postprocess", json={"model_name": CARD["name"], "logits": LOGITS}
        ).json()
    letters, colours = answers["letters"].json(), answers["colours"].json()
    assert (letters["label"], letters["calibrated"]) == ("y", False)
    assert letters["confidence"] == pytest.approx(softmax(logits, 1.0)[1], abs=5e-7)
    assert (colours["label"], colours["calibrated"]) == ("green", True)
    assert colours["confidence"] == pytest.approx(softmax(logits, 0.5)[1], abs=5e-7)
    assert bundled["label_source"] == "model_card"


def test_a_model_repository_without_cards_makes_health_fatal(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    health = Health("postprocess", "test")
    settings = Settings(model_cards=[CARD_PATH], model_repository=tmp_path / "models")
    with TestClient(create_app(settings, health)) as client:
        assert client.get("/readyz").status_code == 503
    assert health.fatal is not None
    assert "holds no" in health.fatal
