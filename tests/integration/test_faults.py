"""The slow-stage fault: off by default, on by environment or through the admin endpoint,
which exists only when an admin token is configured and refuses callers without it."""

from __future__ import annotations

import time

import httpx
import pytest

from servescope.cli.local.services import SERVICES
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import heldout_samples

pytestmark = pytest.mark.slow
DIGIT = heldout_samples(heldout_dir())[0].body


def predict_seconds(url: str) -> float:
    started = time.perf_counter()
    response = httpx.post(
        url + "/v1/predict", content=DIGIT, headers={"Content-Type": "image/png"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def fault_gauge(url: str, step: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("servescope_fault_value{") and (
            'kind="delay"' in line and f'step="{step}"' in line
        ):
            return float(line.split()[-1])
    raise AssertionError(f"no fault gauge for {step}")


def test_fault_from_environment_slows_the_named_step(start_stack) -> None:
    stack = start_stack(
        env={
            "preprocess": {
                "SERVESCOPE_FAULT_STAGE": "resize",
                "SERVESCOPE_FAULT_DELAY_SECONDS": "0.3",
            }
        }
    )
    assert min(predict_seconds(stack.url) for _ in range(3)) >= 0.3
    assert fault_gauge(stack.url, "resize") == 0.3
    assert fault_gauge(stack.url, "decode") == 0.0
    # No token configured: the admin endpoints do not exist at all.
    assert httpx.get(stack.url + "/admin/faults").status_code == 404


def test_admin_endpoint_needs_the_token_and_toggles_the_fault(start_stack) -> None:
    token = "s3cret-for-this-test"
    stack = start_stack(env={"*": {"SERVESCOPE_ADMIN_TOKEN": token}}, names=SERVICES)
    auth = {"Authorization": f"Bearer {token}"}
    assert predict_seconds(stack.url) < 0.25
    refused = httpx.put(stack.url + "/admin/faults/resize", json={"delay_seconds": 0.3})
    assert refused.status_code == 401
    assert refused.json()["kind"] == "unauthorized"
    wrong = httpx.put(
        stack.url + "/admin/faults/resize",
        json={"delay_seconds": 0.3},
        headers={"Authorization": "Bearer nope"},
    )
    assert wrong.status_code == 401
    unknown = httpx.put(
        stack.url + "/admin/faults/teleport", json={"delay_seconds": 1}, headers=auth
    )
    assert unknown.status_code == 404
    assert "resize" in unknown.json()["error"]
    too_long = httpx.put(
        stack.url + "/admin/faults/resize", json={"delay_seconds": 99}, headers=auth
    )
    assert too_long.status_code == 400
    assert "at most 30 seconds" in too_long.json()["error"]

    on = httpx.put(stack.url + "/admin/faults/resize", json={"delay_seconds": 0.3}, headers=auth)
    assert on.status_code == 200
    assert on.json()["delays"] == {"resize": 0.3}
    assert predict_seconds(stack.url) >= 0.3
    off = httpx.delete(stack.url + "/admin/faults/resize", headers=auth)
    assert off.json()["delays"] == {}
    assert predict_seconds(stack.url) < 0.25
    # The classifier has its own step, slowing the model server instead of the edge.
    classifier = stack.services["classifier"].url
    httpx.put(classifier + "/admin/faults/infer", json={"delay_seconds": 0.3}, headers=auth)
    assert predict_seconds(stack.url) >= 0.3
    assert fault_gauge(classifier, "infer") == 0.3


def test_an_unknown_fault_step_at_startup_fails_fast(start_stack) -> None:
    from servescope.cli.local.services import LocalStackError

    with pytest.raises(LocalStackError, match="exited during startup") as failed:
        start_stack(
            env={
                "postprocess": {
                    "SERVESCOPE_FAULT_STAGE": "warp",
                    "SERVESCOPE_FAULT_DELAY_SECONDS": "1",
                }
            }
        )
    assert "unknown step 'warp'" in str(failed.value)
