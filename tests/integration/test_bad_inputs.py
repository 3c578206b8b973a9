"""Bad inputs at the public edge: the documented status and kind for each, and no harm done.

The expected answers are written out here on purpose, not derived from the service code: this
table is the contract a client relies on.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from servescope.cli.local.services import LocalStack
from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import Sample, bad_samples, heldout_samples

# A hang fails here, with every started process stopped, instead of stalling CI.
pytestmark = pytest.mark.timeout(90)

# name -> (Content-Type the sample is sent with, status, kind)
EXPECTED: dict[str, tuple[str, int, str]] = {
    "empty_body": ("image/png", 422, "empty_body"),
    "text": ("text/plain", 415, "unsupported_media_type"),
    "text_as_png": ("image/png", 422, "undecodable_image"),
    "truncated_png": ("image/png", 422, "undecodable_image"),
    "one_pixel": ("image/png", 422, "image_too_small"),
    "decompression_bomb": ("image/png", 413, "image_too_large"),
    "huge_body": ("image/png", 413, "body_too_large"),
    "wrong_content_type": ("application/json", 415, "unsupported_media_type"),
    "cmyk_jpeg": ("image/jpeg", 422, "unsupported_color_mode"),
    "animated_gif": ("image/gif", 415, "unsupported_media_type"),
}

MAX_BODY_BYTES = 4 * 1024 * 1024  # preprocess's default SERVESCOPE_MAX_BODY_BYTES


def _sample(name: str) -> Sample:
    return next(s for s in bad_samples() if s.name == name)


@pytest.fixture(scope="module")
def stack(module_stack_starter) -> LocalStack:
    return module_stack_starter()


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=15) as client:
        yield client


def _post(client: httpx.Client, sample: Sample) -> httpx.Response:
    return client.post(
        "/v1/predict", content=sample.body, headers={"content-type": sample.content_type}
    )


def _assert_error(response: httpx.Response, status: int, kind: str, stage: str | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str)
    assert body["error"]
    assert body["kind"] == kind
    if stage is not None:
        assert body["stage"] == stage


def test_table_covers_every_bad_sample() -> None:
    assert sorted(s.name for s in bad_samples()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_bad_input(client: httpx.Client, name: str) -> None:
    content_type, status, kind = EXPECTED[name]
    sample = _sample(name)
    assert sample.content_type == content_type
    _assert_error(_post(client, sample), status, kind, "decode")


def test_huge_chunked_body_is_refused(client: httpx.Client) -> None:
    chunk = b"\x00" * (256 * 1024)
    chunks = (MAX_BODY_BYTES // len(chunk)) * 2  # twice the limit, never announced up front

    def body() -> Iterator[bytes]:
        yield b"\x89PNG"
        for _ in range(chunks):
            yield chunk

    response = client.post("/v1/predict", content=body(), headers={"content-type": "image/png"})
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    _assert_error(response, 413, "body_too_large", "decode")


def test_multipart_without_file_part(client: httpx.Client) -> None:
    response = client.post(
        "/v1/predict",
        data={"comment": "no image attached"},
        files={"field": (None, b"plain form value")},  # a form field, not a file
    )
    assert response.request.headers["content-type"].startswith("multipart/form-data")
    _assert_error(response, 422, "missing_file", "decode")


def test_unknown_route_is_json_404(client: httpx.Client) -> None:
    _assert_error(client.get("/v1/nope"), 404, "not_found", None)


def test_services_keep_serving_after_bad_inputs(
    stack: LocalStack, client: httpx.Client, service_log
) -> None:
    # Replay the whole table once more, so this holds however the tests are selected.
    for sample in bad_samples():
        response = _post(client, sample)
        assert response.status_code == EXPECTED[sample.name][1], (sample.name, response.text)
    digit = heldout_samples(heldout_dir())[0]
    response = client.post(
        "/v1/predict", content=digit.body, headers={"content-type": digit.content_type}
    )
    assert response.status_code == 200, response.text
    assert response.json()["label"] == digit.label
    for name, service in stack.services.items():
        assert service.running(), f"{name} died:\n{service.log_tail()}"
    assert "unhandled_error" not in service_log(stack, "preprocess")
