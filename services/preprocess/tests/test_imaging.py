"""imaging.py: the model-card normalisation, resizing, transparency and every decode refusal."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from servescope.classifier import oip
from servescope.classifier.model import load_model
from servescope.loadgen.inputs import png_bomb
from servescope.preprocess.imaging import ImageLimits, InputSpec, decode_image, to_tensor
from servescope.preprocess.settings import Settings
from servescope.runtime.errors import ServiceError

MODEL_DIR = Path(__file__).resolve().parents[2] / "classifier" / "model"
CARD = json.loads((MODEL_DIR / "model-card.json").read_text())
NORM = CARD["input"]["normalisation"]
MEAN = np.float32(NORM["mean"])
STD = np.float32(NORM["std"])
# One grey level, in normalised units: the most Pillow's integer resampling may round away.
LEVEL = 1 / 255 / float(NORM["std"])


def card_formula(pixels: np.ndarray) -> np.ndarray:
    """The model card's normalisation, written out from the card, nothing else."""
    return (pixels.astype(np.float32) / np.float32(255) - MEAN) / STD


def heldout() -> list[tuple[Path, str]]:
    with (MODEL_DIR / "heldout" / "labels.csv").open(newline="") as handle:
        return [
            (MODEL_DIR / "heldout" / row["file"], row["label"]) for row in csv.DictReader(handle)
        ]


def png_bytes(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def spec() -> InputSpec:
    # The spec exactly as the classifier publishes it for the bundled model.
    metadata = oip.model_metadata(load_model(MODEL_DIR / "digits-cnn.onnx"))
    return InputSpec.from_metadata(metadata)


@pytest.fixture(scope="module")
def limits() -> ImageLimits:
    settings = Settings()
    return ImageLimits(settings.max_pixels, settings.min_side)


# --- InputSpec -------------------------------------------------------------------------


def test_spec_from_the_bundled_model_matches_the_card(spec: InputSpec) -> None:
    assert spec.name == CARD["input"]["name"]
    assert [-1, spec.channels, spec.height, spec.width] == CARD["input"]["shape"]
    assert spec.shape == [1, 1, 8, 8]
    assert spec.scale == pytest.approx(NORM["scale"], rel=1e-12)
    assert spec.mean == pytest.approx(NORM["mean"], rel=1e-12)
    assert spec.std == pytest.approx(NORM["std"], rel=1e-12)


def _metadata(shape, datatype="FP32", parameters=None) -> dict:
    return {
        "inputs": [{"name": "x", "datatype": datatype, "shape": shape}],
        "parameters": parameters or {},
    }


def test_spec_defaults_without_parameters() -> None:
    spec = InputSpec.from_metadata(_metadata([1, 3, 32, 24]))
    assert (spec.channels, spec.height, spec.width) == (3, 32, 24)
    assert spec.scale == pytest.approx(1 / 255)
    assert (spec.mean, spec.std) == (0.0, 1.0)


@pytest.mark.parametrize(
    "metadata",
    [
        {"inputs": []},
        {},
        {
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [-1, 1, 8, 8]},
                {"name": "b", "datatype": "FP32", "shape": [-1, 1, 8, 8]},
            ]
        },
        _metadata([-1, 64]),
        _metadata([-1, 8, 8]),
        _metadata([-1, 1, 8, 8, 1]),
        _metadata([2, 1, 8, 8]),
        _metadata([-1, 4, 8, 8]),
        _metadata([-1, 8, 8, 1]),  # NHWC
        _metadata([-1, 1, -1, -1]),  # dynamic height and width
        _metadata([-1, 1, 8, 8], datatype="FP16"),
        _metadata([-1, 1, 8, 8], datatype="UINT8"),
        _metadata([-1, 1, 8, 8], datatype=None),
        _metadata([-1, 1, 8, 8], parameters={"normalize_std": "0"}),
        _metadata([-1, 1, 8, 8], parameters={"input_scale": "nan"}),
    ],
)
def test_spec_rejects_what_preprocess_cannot_build(metadata: dict) -> None:
    with pytest.raises(ValueError):
        InputSpec.from_metadata(metadata)


# --- to_tensor ---------------------------------------------------------------------------


def test_every_heldout_png_matches_the_card_formula(spec: InputSpec, limits: ImageLimits) -> None:
    samples = heldout()
    assert len(samples) == CARD["heldout"]["count"]
    for path, _ in samples:
        data = path.read_bytes()
        tensor = to_tensor(decode_image(data, limits), spec)
        assert tensor.shape == (1, 1, 8, 8)
        assert tensor.dtype == np.float32
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.uint8)
        expected = card_formula(pixels)[np.newaxis, np.newaxis]
        np.testing.assert_allclose(tensor, expected, rtol=0, atol=1e-6, err_msg=path.name)


@pytest.mark.parametrize("factor", [2, 3, 5])
def test_blown_up_digits_shrink_back_to_the_original(
    spec: InputSpec, limits: ImageLimits, factor: int
) -> None:
    path = heldout()[0][0]
    original = Image.open(path).convert("L")
    big = original.resize((8 * factor, 8 * factor), Image.Resampling.NEAREST)
    tensor = to_tensor(decode_image(png_bytes(big), limits), spec)
    assert tensor.shape == (1, 1, 8, 8)
    expected = card_formula(np.asarray(original))[np.newaxis, np.newaxis]
    np.testing.assert_allclose(tensor, expected, rtol=0, atol=1e-6)


def test_shrinking_averages_each_block(spec: InputSpec) -> None:
    # BOX: every 8x8 output pixel is the mean of its 3x3 source block (to within one 8-bit level).
    pixels = np.random.default_rng(7).integers(0, 256, size=(24, 24), dtype=np.uint8)
    tensor = to_tensor(Image.fromarray(pixels, mode="L"), spec)
    block_means = pixels.astype(np.float64).reshape(8, 3, 8, 3).mean(axis=(1, 3))
    expected = (block_means / 255 - float(MEAN)) / float(STD)
    np.testing.assert_allclose(tensor[0, 0], expected, rtol=0, atol=LEVEL)


def test_a_lone_bright_pixel_stays_in_its_block(spec: InputSpec) -> None:
    pixels = np.zeros((16, 16), dtype=np.uint8)
    pixels[0, 0] = 255
    tensor = to_tensor(Image.fromarray(pixels, mode="L"), spec)[0, 0]
    background = (0 - float(MEAN)) / float(STD)
    assert tensor[0, 0] == pytest.approx((255 / 4 / 255 - float(MEAN)) / float(STD), abs=LEVEL)
    np.testing.assert_allclose(tensor.ravel()[1:], background, atol=1e-6)


def test_non_square_input_is_squeezed_to_8x8(spec: InputSpec) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, size=(8, 16), dtype=np.uint8)
    tensor = to_tensor(Image.fromarray(pixels, mode="L"), spec)
    pair_means = pixels.astype(np.float64).reshape(8, 8, 2).mean(axis=2)
    expected = (pair_means / 255 - float(MEAN)) / float(STD)
    np.testing.assert_allclose(tensor[0, 0], expected, rtol=0, atol=LEVEL)


def test_enlarging_a_uniform_image_keeps_its_value(spec: InputSpec) -> None:
    tensor = to_tensor(Image.new("L", (4, 4), 200), spec)
    assert tensor.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(tensor, card_formula(np.array(200)), atol=1e-6)


def test_transparent_rgba_pixels_become_black(spec: InputSpec, limits: ImageLimits) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (255, 255, 255, 0)  # invisible white: background
    rgba[:, 4:] = (255, 255, 255, 255)  # opaque white: full ink
    rgba[0, 0] = (255, 255, 255, 128)  # half-transparent white: half ink
    image = decode_image(png_bytes(Image.fromarray(rgba, mode="RGBA")), limits)
    assert image.mode == "RGBA"
    tensor = to_tensor(image, spec)[0, 0]
    np.testing.assert_allclose(tensor[1:, :4], card_formula(np.array(0)), atol=1e-6)
    np.testing.assert_allclose(tensor[:, 4:], card_formula(np.array(255)), atol=1e-6)
    assert tensor[0, 0] == pytest.approx(float(card_formula(np.array(128))), abs=LEVEL)


def test_transparent_la_pixels_become_black(spec: InputSpec, limits: ImageLimits) -> None:
    la = np.zeros((8, 8, 2), dtype=np.uint8)
    la[..., 0] = 255
    la[:4, :, 1] = 0
    la[4:, :, 1] = 255
    image = decode_image(png_bytes(Image.fromarray(la, mode="LA")), limits)
    tensor = to_tensor(image, spec)[0, 0]
    np.testing.assert_allclose(tensor[:4], card_formula(np.array(0)), atol=1e-6)
    np.testing.assert_allclose(tensor[4:], card_formula(np.array(255)), atol=1e-6)


def test_palette_transparency_becomes_black(spec: InputSpec, limits: ImageLimits) -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 255, 255, 200, 200, 200] + [0, 0, 0] * 254)
    image.paste(1, (0, 4, 8, 8))  # bottom half uses palette entry 1 (grey 200)
    with_transparency = decode_image(png_bytes(image, transparency=0), limits)
    assert with_transparency.mode == "P"
    tensor = to_tensor(with_transparency, spec)[0, 0]
    np.testing.assert_allclose(tensor[:4], card_formula(np.array(0)), atol=1e-6)
    np.testing.assert_allclose(tensor[4:], card_formula(np.array(200)), atol=1e-6)
    # The same palette without transparency keeps its white.
    opaque = to_tensor(decode_image(png_bytes(image), limits), spec)[0, 0]
    np.testing.assert_allclose(opaque[:4], card_formula(np.array(255)), atol=1e-6)


def test_rgb_is_converted_to_luma(spec: InputSpec) -> None:
    # ITU-R 601-2 luma, L = 0.299 R + 0.587 G + 0.114 B, is Pillow's RGB -> L.
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (90, 180, 30)]
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    for i, colour in enumerate(colours):
        rgb[2 * i : 2 * i + 2] = colour
    tensor = to_tensor(Image.fromarray(rgb, mode="RGB"), spec)[0, 0]
    for i, (r, g, b) in enumerate(colours):
        luma = 0.299 * r + 0.587 * g + 0.114 * b
        expected = (luma / 255 - float(MEAN)) / float(STD)
        np.testing.assert_allclose(tensor[2 * i : 2 * i + 2], expected, atol=LEVEL)


def test_three_channel_models_get_rgb_planes() -> None:
    spec = InputSpec.from_metadata(
        _metadata(
            [-1, 3, 8, 8],
            parameters={
                "input_scale": str(1 / 255),
                "normalize_mean": "0.5",
                "normalize_std": "0.25",
            },
        )
    )
    tensor = to_tensor(Image.new("RGB", (16, 16), (10, 100, 200)), spec)
    assert tensor.shape == (1, 3, 8, 8)
    assert tensor.dtype == np.float32
    for channel, value in enumerate((10, 100, 200)):
        np.testing.assert_allclose(tensor[0, channel], (value / 255 - 0.5) / 0.25, atol=1e-6)


# --- decode_image refusals ----------------------------------------------------------------


def _jpeg(mode: str, size=(32, 32), colour=0) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _encoded(fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 90).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _apng() -> bytes:
    frames = [Image.new("L", (16, 16), shade) for shade in (0, 128, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:], duration=50)
    data = buffer.getvalue()
    assert b"acTL" in data  # really an APNG
    return data


def _noise_png(side: int = 64) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, size=(side, side), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels, mode="L"))


def _assert_refused(data: bytes, limits: ImageLimits, status: int, kind: str) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        decode_image(data, limits)
    err = caught.value
    assert (err.status, err.kind, err.stage) == (status, kind, "decode")
    assert err.message
    return err


@pytest.mark.parametrize(
    ("name", "status", "kind"),
    [
        ("empty", 422, "empty_body"),
        ("garbage", 422, "undecodable_image"),
        ("text", 422, "undecodable_image"),
        ("truncated_png", 422, "undecodable_image"),
        ("truncated_heldout", 422, "undecodable_image"),
        ("png_signature_only", 422, "undecodable_image"),
        ("one_pixel", 422, "image_too_small"),
        ("eight_by_seven", 422, "image_too_small"),
        ("cmyk_jpeg", 422, "unsupported_color_mode"),
        ("apng", 422, "animated_image"),
        ("gif", 415, "unsupported_media_type"),
        ("animated_gif", 415, "unsupported_media_type"),
        ("bmp", 415, "unsupported_media_type"),
        ("webp", 415, "unsupported_media_type"),
    ],
)
def test_decode_refusals(name: str, status: int, kind: str, limits: ImageLimits) -> None:
    heldout_png = heldout()[0][0].read_bytes()
    frames = [Image.new("L", (16, 16), s) for s in (0, 255)]
    animated_gif = io.BytesIO()
    frames[0].save(animated_gif, format="GIF", save_all=True, append_images=frames[1:])
    data = {
        "empty": b"",
        "garbage": bytes(range(256)) * 4,
        "text": b"this is not an image",
        "truncated_png": _noise_png()[:2000],
        "truncated_heldout": heldout_png[: len(heldout_png) // 2],
        "png_signature_only": b"\x89PNG\r\n\x1a\n",
        "one_pixel": png_bytes(Image.new("L", (1, 1))),
        "eight_by_seven": png_bytes(Image.new("L", (8, 7))),
        "cmyk_jpeg": _jpeg("CMYK", colour=(0, 0, 0, 255)),
        "apng": _apng(),
        "gif": _encoded("GIF"),
        "animated_gif": animated_gif.getvalue(),
        "bmp": _encoded("BMP"),
        "webp": _encoded("WEBP"),
    }[name]
    _assert_refused(data, limits, status, kind)


def test_the_20000_square_bomb_is_refused_as_too_large(limits: ImageLimits) -> None:
    bomb = png_bomb()
    assert len(bomb) < 1_000_000  # small on the wire, 400 MB decoded
    err = _assert_refused(bomb, limits, 413, "image_too_large")
    assert str(limits.max_pixels) in err.message


def test_a_big_header_is_refused_without_decoding_pixels(limits: ImageLimits) -> None:
    # 5000x5000 is over the service limit (16.7 M pixels) yet under Pillow's own bomb limit, so
    # the service's header check is what refuses it. The pixel data is cut off after 1 KB: had
    # decoding started, this would be a 422 for a truncated image instead of a 413.
    header_only = png_bomb(5000)[:1024]
    err = _assert_refused(header_only, limits, 413, "image_too_large")
    assert "5000x5000" in err.message


def test_the_pixel_limit_is_inclusive() -> None:
    exact = png_bytes(Image.new("L", (10, 10)))
    assert decode_image(exact, ImageLimits(max_pixels=100, min_side=8)).size == (10, 10)
    _assert_refused(exact, ImageLimits(max_pixels=99, min_side=8), 413, "image_too_large")


def test_every_prefix_of_a_png_or_jpeg_is_refused_cleanly(limits: ImageLimits) -> None:
    # Cut anywhere, including inside the PNG IHDR or a JPEG header segment: a 4xx
    # ServiceError, never a bare Pillow exception (which the service would turn into a 500).
    # A PNG cut only after its last pixel data (in the trailing CRC or IEND) is still whole.
    pixels = np.random.default_rng(2).integers(0, 256, size=(16, 16), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(jpeg, format="JPEG")
    png = png_bytes(Image.fromarray(pixels, mode="L"))
    statuses: list[int] = []
    for data in (png, jpeg.getvalue()):
        for cut in range(len(data)):
            try:
                image = decode_image(data[:cut], limits)
            except ServiceError as err:
                statuses.append(err.status)
            else:
                assert data is png, cut
                assert cut >= len(png) - 24, cut
                np.testing.assert_array_equal(np.asarray(image), pixels)
    assert all(400 <= status < 500 for status in statuses)
    assert len(statuses) > len(png) + len(jpeg.getvalue()) - 25


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("RGB", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
        ("1", "PNG"),
        ("L", "JPEG"),
        ("RGB", "JPEG"),
    ],
)
def test_supported_modes_decode_fully(mode: str, fmt: str, limits: ImageLimits) -> None:
    buffer = io.BytesIO()
    Image.new(mode, (12, 9)).save(buffer, format=fmt)
    image = decode_image(buffer.getvalue(), limits)
    assert image.format == fmt
    assert image.size == (12, 9)


def test_png_bomb_header_is_what_it_claims() -> None:
    bomb = png_bomb(5000)
    assert bomb[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", bomb[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", bomb[16:24])
    assert (width, height) == (5000, 5000)
    assert struct.unpack(">I", bomb[29:33])[0] == zlib.crc32(bomb[12:29])
