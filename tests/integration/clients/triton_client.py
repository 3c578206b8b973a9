"""Triton's `tritonclient.http` against the classifier, with its defaults.

Run by tests/integration/test_real_clients.py with the Python of a throwaway environment
that has tritonclient[http] installed: `python triton_client.py URL MODEL DIGITS_JSON`.
Prints one JSON object: health, metadata and how many digits came back right.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import tritonclient.http as httpclient


def main(url: str, model: str, digits_path: str) -> dict[str, object]:
    digits = json.loads(Path(digits_path).read_text())
    client = httpclient.InferenceServerClient(urlparse(url).netloc)
    try:
        metadata = client.get_model_metadata(model)
        result: dict[str, object] = {
            "server_live": client.is_server_live(),
            "server_ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
            "server_extensions": client.get_server_metadata().get("extensions", []),
            "model_inputs": [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]],
        }
        correct = 0
        for tensor, label in zip(digits["tensors"], digits["labels"], strict=True):
            data = np.asarray(tensor, dtype=np.float32).reshape(1, 1, 8, 8)
            infer_input = httpclient.InferInput("input", list(data.shape), "FP32")
            infer_input.set_data_from_numpy(data)  # binary_data=True: the client's default
            output = httpclient.InferRequestedOutput("logits")  # binary too, by default
            response = client.infer(model, [infer_input], outputs=[output])
            logits = response.as_numpy("logits")
            correct += int(str(int(np.argmax(logits))) == label)
        result["correct"] = correct
        result["total"] = len(digits["labels"])
        return result
    finally:
        client.close()


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
