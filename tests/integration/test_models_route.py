"""Routing by model, through real processes: the edge's /v1/models/{name}/predict reaches
each model of a repository the classifier serves, postprocess answers with each model's own
card, an unknown model is a 404 in the shared JSON shape counted as unknown_model, and the
route template, never a model name, is the http_route label."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from servescope.cli import main as cli
from servescope.cli.local.services import LocalStack
from servescope.cli.paths import bundled_model, bundled_model_card, heldout_dir
from servescope.loadgen.inputs import heldout_samples
from servescope.loadgen.traffic import LoadConfig, run_load

# A hang fails here, with every started process stopped, instead of stalling CI.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

ROUTE = "/v1/models/{name}/predict"
SAMPLES = 20


def _repository(root: Path) -> Path:
    """Two models made from the bundled one (fast, no training): digits-a as it is, and
    digits-b with labels of its own and another calibration temperature, so an answer
    shows which card postprocess used."""
    bundled = json.loads(bundled_model_card().read_text())
    for name, labels, temperature in [
        ("digits-a", bundled["labels"], bundled["calibration"]["temperature"]),
        ("digits-b", [f"digit-{label}" for label in bundled["labels"]], 4.0),
    ]:
        folder = root / name
        folder.mkdir(parents=True)
        shutil.copyfile(bundled_model(), folder / f"{name}.onnx")
        card = {
            **bundled,
            "name": name,
            "file": f"{name}.onnx",
            "labels": labels,
            "calibration": {**bundled["calibration"], "temperature": temperature},
        }
        (folder / "model-card.json").write_text(json.dumps(card, indent=2))
    return root


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric family, keyed by their sorted labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match.group(1))))
            found[labels] = float(match.group(2))
    return found


def _predict(client: httpx.Client, path: str, body: bytes) -> dict[str, Any]:
    response = client.post(path, content=body, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture(scope="module")
def stack(module_stack_starter, tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    repository = _repository(tmp_path_factory.mktemp("repository") / "models")
    started: LocalStack = module_stack_starter(model_repository=repository)
    return started


def test_each_model_answers_at_its_route_and_an_unknown_one_is_404(stack: LocalStack) -> None:
    samples = heldout_samples(heldout_dir())[:SAMPLES]
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        correct = {"digits-a": 0, "digits-b": 0}
        for sample in samples:
            default = _predict(client, "/v1/predict", sample.body)
            a = _predict(client, "/v1/models/digits-a/predict", sample.body)
            b = _predict(client, "/v1/models/digits-b/predict", sample.body)
            assert default["model_name"] == "digits-cnn"
            assert (a["model_name"], b["model_name"]) == ("digits-a", "digits-b")
            # One network, three cards: the same class, each model's own labels and
            # calibration (T=4 flattens digits-b's confidence).
            assert a["class_index"] == b["class_index"] == default["class_index"]
            assert b["label"] == f"digit-{a['label']}"
            assert b["label_source"] == "model_card"
            assert b["confidence"] < a["confidence"]
            correct["digits-a"] += a["label"] == sample.label
            correct["digits-b"] += b["label"] == f"digit-{sample.label}"
        assert min(correct.values()) >= 0.9 * SAMPLES, correct
        # The default model is also reachable by name.
        named = _predict(client, "/v1/models/digits-cnn/predict", samples[0].body)
        assert named["model_name"] == "digits-cnn"

        for _ in range(2):  # unknown names are not cached: both ask the classifier
            unknown = client.post(
                "/v1/models/no-such-model/predict",
                content=samples[0].body,
                headers={"Content-Type": "image/png"},
            )
            assert unknown.status_code == 404
            assert unknown.headers["content-type"].startswith("application/json")
            assert set(unknown.json()) == {"error", "kind"}
            assert unknown.json()["kind"] == "unknown_model"
            assert "no-such-model" in unknown.json()["error"]

        preprocess = client.get("/metrics").text
    classifier = httpx.get(stack.services["classifier"].url + "/metrics", timeout=5).text

    durations = _samples(preprocess, "http_server_request_duration_seconds_count")
    by_route: dict[tuple[str, str], float] = {}
    for labels, value in durations.items():
        label = dict(labels)
        key = (label["http_route"], label["http_response_status_code"])
        by_route[key] = by_route.get(key, 0.0) + value
    assert by_route[(ROUTE, "200")] == 2 * SAMPLES + 1
    assert by_route[(ROUTE, "404")] == 2
    assert by_route[("/v1/predict", "200")] == SAMPLES
    routes = {route for route, _ in by_route}
    assert not any("digits-" in route or "no-such-model" in route for route in routes), routes

    def unknown_model(text: str) -> float:
        return _samples(text, "servescope_rejected_inputs_total").get(
            (("reason", "unknown_model"),), 0.0
        )

    assert unknown_model(preprocess) == 2
    assert unknown_model(classifier) == 2  # it refused the two metadata look-ups


def test_the_traffic_generator_spreads_requests_over_the_models(stack: LocalStack) -> None:
    config = LoadConfig(
        url=stack.url,
        heldout_dir=heldout_dir(),
        rate=500.0,
        duration=0,
        requests=60,
        concurrency=4,
        models=["digits-a", "digits-b"],
        seed=1,
    )
    result = asyncio.run(run_load(config, None))
    assert result.ok == 60, result.summary()
    assert sum(result.by_model.values()) == 60
    assert result.by_model["digits-a"] > result.by_model["digits-b"] > 0  # a ranks first
    assert result.correct_by_model["digits-a"] >= 0.9 * result.labelled_by_model["digits-a"]


def test_servescope_predict_names_a_model(stack: LocalStack, capsys) -> None:
    digit = str(heldout_dir() / "0000_7.png")
    assert cli.main(["predict", digit, "--url", stack.url, "--model", "digits-b"]) == 0
    assert "digit-7 (confidence" in capsys.readouterr().out
    assert cli.main(["predict", digit, "--url", stack.url, "--model", "nope"]) == 1
    assert "404 unknown_model" in capsys.readouterr().out
