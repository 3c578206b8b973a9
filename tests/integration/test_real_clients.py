"""The clients users of Triton and KServe already have, with their default settings, against
the classifier: Triton's `tritonclient.http` and KServe's `InferenceRESTClient`, each in a
throwaway environment of its own (as the bench installs its peers). Both send tensors with
the binary tensor data extension by default; each gets every held-out digit back, with the
model card's accuracy."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from servescope.cli.bench.peers import PEERS, PeerSpec, install_peer
from servescope.cli.local.services import LocalStack
from servescope.cli.paths import bundled_model_card, heldout_dir
from servescope.loadgen.inputs import heldout_samples

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CLIENTS = {
    "kserve": PEERS["kserve"],  # the bench's own KServe environment, shared with it
    "triton": PeerSpec("tritonclient", ("tritonclient[http]==2.73.*", "numpy")),
}
SCRIPTS = Path(__file__).with_name("clients")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Every held-out digit as the model's tensor (the card's normalisation), with its label."""
    card = json.loads(bundled_model_card().read_text())
    norm = card["input"]["normalisation"]
    samples = heldout_samples(heldout_dir())
    tensors = [
        ((np.asarray(Image.open(io.BytesIO(s.body)).convert("L"), np.float32) / 255) - norm["mean"])
        / norm["std"]
        for s in samples
    ]
    path = tmp_path_factory.mktemp("digits") / "digits.json"
    path.write_text(
        json.dumps(
            {"tensors": [t.ravel().tolist() for t in tensors], "labels": [s.label for s in samples]}
        )
    )
    return path, card


@pytest.mark.parametrize("client", CLIENTS)
def test_a_real_client_gets_every_digit_with_the_cards_accuracy(
    start_stack, digits: tuple[Path, dict], client: str
) -> None:
    installed = install_peer(CLIENTS[client])
    assert installed.venv is not None, f"{client} did not install: {installed.skipped}"
    stack: LocalStack = start_stack(names=("classifier",))
    path, card = digits
    script = SCRIPTS / f"{client}_client.py"
    url = stack.services["classifier"].url
    done = subprocess.run(
        [str(installed.python), str(script), url, card["name"], str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["server_live"] and result["server_ready"] and result["model_ready"], result
    assert result["total"] == card["heldout"]["count"]
    assert result["correct"] == card["metrics"]["heldout_correct"], result
    if client == "triton":
        assert "binary_tensor_data" in result["server_extensions"]
        assert result["model_inputs"] == [["input", "FP32", [-1, 1, 8, 8]]]
