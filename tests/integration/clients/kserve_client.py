"""KServe's InferenceRESTClient (protocol v2) against the classifier, with its defaults.

Run by tests/integration/test_real_clients.py with the Python of a throwaway environment
that has kserve installed: `python kserve_client.py URL MODEL DIGITS_JSON`. Prints one JSON
object: health answers and how many digits came back right.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, model: str, digits: dict[str, list]) -> dict[str, object]:
    client = InferenceRESTClient(RESTConfig(protocol="v2"))
    try:
        result: dict[str, object] = {
            "server_live": await client.is_server_live(url),
            "server_ready": await client.is_server_ready(url),
            "model_ready": await client.is_model_ready(url, model),
        }
        correct = 0
        for tensor, label in zip(digits["tensors"], digits["labels"], strict=True):
            data = np.asarray(tensor, dtype=np.float32).reshape(1, 1, 8, 8)
            infer_input = InferInput("input", list(data.shape), "FP32")
            infer_input.set_data_from_numpy(data)  # binary tensor data: the client's default
            response = await client.infer(url, InferRequest(model, [infer_input]), model)
            logits = response.outputs[0].as_numpy()
            correct += int(str(int(np.argmax(logits))) == label)
        result["correct"] = correct
        result["total"] = len(digits["labels"])
        return result
    finally:
        await client.close()


if __name__ == "__main__":
    url, model, digits_path = sys.argv[1:4]
    digits = json.loads(Path(digits_path).read_text())
    print(json.dumps(asyncio.run(main(url, model, digits))))
