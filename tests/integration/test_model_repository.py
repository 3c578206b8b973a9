"""The classifier serving a built model repository: every model over OIP v2, as its card says.

Real processes: `servescope models build` logic writes the repository, the classifier starts
on a free port with SERVESCOPE_MODEL_REPOSITORY, and the held-out digits go to each model
over HTTP one at a time, as the builder measured them; each model must score exactly what
its card says (same inputs, same onnxruntime, batch 1: no tolerance needed). The other
models of a 50-model repository are copies of those under other names: loading 50 and
answering on each is what they test.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from PIL import Image

from servescope.cli.local.services import LocalStack
from servescope.cli.model_repository import build_repository
from servescope.cli.paths import bundled_model_card, heldout_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

COUNT = 4  # digits-cnn, then a logistic regression, a random forest and a k-NN
MANY = 50


def heldout() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits as the edge makes them: PNG pixels, then the card's formula."""
    norm = json.loads(bundled_model_card().read_text())["input"]["normalisation"]
    with (heldout_dir() / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    pixels = np.stack(
        [np.asarray(Image.open(heldout_dir() / r["file"]).convert("L"), np.uint8) for r in rows]
    )
    x = (pixels.astype(np.float32) / np.float32(255) - np.float32(norm["mean"])) / np.float32(
        norm["std"]
    )
    return x.reshape(-1, 1, 8, 8), np.array([int(r["label"]) for r in rows])


def infer_body(x: np.ndarray) -> bytes:
    # float() of a float32 is exact, and the classifier parses it back to the same float32.
    data = [float(v) for v in x.ravel()]
    return orjson.dumps(
        {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": data}]}
    )


def scrape(client: httpx.Client) -> str:
    return client.get("/metrics").text


def series(text: str, metric: str) -> dict[str, float]:
    """model_name -> value of one metric's series."""
    found = {}
    for line in text.splitlines():
        match = re.match(rf'{metric}\{{.*?model_name="([^"]+)".*?\}} (\S+)$', line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def fifty(out: Path, cards: list[dict[str, Any]], many: Path) -> None:
    """50 models: the built ones, then copies of them under other names (loading is tested)."""
    shutil.copytree(out, many)
    for i in range(MANY - len(cards)):
        source = cards[1 + i % (len(cards) - 1)]
        name = f"{source['name']}-copy{i}"
        (many / name).mkdir()
        shutil.copy2(out / source["name"] / source["file"], many / name / source["file"])
        (many / name / "model-card.json").write_text(json.dumps({**source, "name": name}))


def test_fifty_models_load_and_each_answers_with_its_cards_accuracy(
    start_stack, tmp_path: Path
) -> None:
    out = tmp_path / "built"
    cards = build_repository(out, COUNT, seed=0, jobs=2)
    many = tmp_path / "many"
    fifty(out, cards, many)
    started = time.monotonic()
    stack: LocalStack = start_stack(names=("classifier",), model_repository=many)
    ready_seconds = time.monotonic() - started
    x, y = heldout()
    with httpx.Client(base_url=stack.services["classifier"].url, timeout=10) as client:
        index = client.post("/v2/repository/index", json={"ready": True})
        assert index.status_code == 200, index.text
        assert len(index.json()) == MANY
        assert {row["state"] for row in index.json()} == {"READY"}
        assert [row["name"] for row in index.json()] == sorted(
            p.name for p in many.iterdir() if p.is_dir()
        )
        assert client.get("/v2/repository/index").json() == index.json()

        # The built models: the held-out digits one by one, as the builder measured them.
        for card in cards:
            name = card["name"]
            metadata = client.get(f"/v2/models/{name}").json()
            assert metadata["name"] == name
            assert metadata["versions"] == [card["version"]]
            assert metadata["inputs"] == [
                {"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}
            ]
            assert metadata["outputs"] == [
                {"name": "logits", "datatype": "FP32", "shape": [-1, 10]}
            ]
            assert metadata["parameters"]["sha256"] == card["sha256"]
            assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
            correct = 0
            for i in range(len(x)):
                answer = client.post(
                    f"/v2/models/{name}/infer",
                    content=infer_body(x[i : i + 1]),
                    headers={"Content-Type": "application/json"},
                )
                assert answer.status_code == 200, answer.text
                output = answer.json()["outputs"][0]
                assert output["name"] == "logits"
                correct += int(np.argmax(output["data"]) == y[i])
            assert correct == card["metrics"]["heldout_correct"], name
            assert correct / len(y) == card["metrics"]["heldout_accuracy"]

        # Every other model answers too, metadata and inference.
        copies = [row["name"] for row in index.json() if "-copy" in row["name"]]
        for name in copies:
            assert client.get(f"/v2/models/{name}").json()["name"] == name
            answer = client.post(
                f"/v2/models/{name}/infer",
                content=infer_body(x[:1]),
                headers={"Content-Type": "application/json"},
            )
            assert answer.status_code == 200, answer.text

        unknown = client.get("/v2/models/digits-nope")
        assert unknown.status_code == 404
        assert unknown.json()["kind"] == "unknown_model"
        text = scrape(client)

    names = {row["name"] for row in index.json()}
    assert set(series(text, "servescope_model_info")) == names
    memory = series(text, "servescope_model_memory_bytes")
    assert set(memory) == names
    assert all(v >= 0 for v in memory.values())
    assert memory["digits-cnn"] > 0  # the first model carries onnxruntime's own start-up
    counts = series(text, "servescope_inference_duration_seconds_count")
    assert counts == {
        **dict.fromkeys((c["name"] for c in cards), float(len(y))),
        **dict.fromkeys(copies, 1.0),
    }
    rss = float(re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M).group(1))
    loaded = next(
        json.loads(line)
        for line in stack.services["classifier"].log_path.read_text().splitlines()
        if '"model_repository_loaded"' in line
    )
    assert loaded["model_count"] == MANY
    print(
        f"{MANY} models: ready {ready_seconds:.1f} s after launch, loaded in "
        f"{loaded['load_seconds']:.2f} s, {loaded['memory_bytes'] / 2**20:.0f} MiB by model, "
        f"RSS {rss / 2**20:.0f} MiB"
    )
