"""What the traffic generator sends: held-out digits, and a fixed set of bad inputs.

The bad inputs are the ones every edge service meets in the wild: nothing, text, a cut-off
file, a 1x1 pixel, a decompression bomb, a huge body, a wrong Content-Type, a CMYK JPEG and
an animated GIF.
"""

from __future__ import annotations

import csv
import functools
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Sample:
    name: str
    body: bytes
    content_type: str
    label: str | None = None  # the true label, for held-out digits


@functools.cache
def heldout_samples(directory: Path) -> tuple[Sample, ...]:
    """The model's held-out digits (a directory with labels.csv), labelled for accuracy."""
    with (directory / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return tuple(
        Sample(row["file"], (directory / row["file"]).read_bytes(), "image/png", row["label"])
        for row in rows
    )


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def png_bomb(side: int = 20_000) -> bytes:
    """A valid grayscale PNG of side x side black pixels: ~400 MB decoded, ~400 KB on the wire."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    parts = [compressor.compress(row) for _ in range(side)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 0, 0, 255)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.new("L", (16, 16), shade) for shade in (0, 128, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    return buffer.getvalue()


@functools.cache
def bad_samples(max_body_bytes: int = 4 * 1024 * 1024) -> tuple[Sample, ...]:
    # Any valid PNG serves to truncate or mislabel; the held-out digits are not needed.
    digit = _png(Image.new("L", (8, 8), 128))
    return (
        Sample("empty_body", b"", "image/png"),
        Sample("text", b"this is not an image", "text/plain"),
        Sample("text_as_png", b"this is not an image either", "image/png"),
        Sample("truncated_png", digit[: len(digit) // 2], "image/png"),
        Sample("one_pixel", _png(Image.new("L", (1, 1))), "image/png"),
        Sample("decompression_bomb", png_bomb(), "image/png"),
        Sample("huge_body", b"\x89PNG" + b"\x00" * max_body_bytes, "image/png"),
        Sample("wrong_content_type", digit, "application/json"),
        Sample("cmyk_jpeg", _cmyk_jpeg(), "image/jpeg"),
        Sample("animated_gif", _animated_gif(), "image/gif"),
    )


def _shifted(digit: bytes, kind: str, rng: np.random.Generator) -> bytes:
    pixels = np.asarray(Image.open(io.BytesIO(digit)).convert("L"), dtype=np.float64)
    if kind == "inverted":
        pixels = 255.0 - pixels
    elif kind == "noisy":
        pixels = pixels + rng.normal(0.0, 64.0, pixels.shape)
    else:  # rotated: a quarter turn, the ink statistics unchanged but the shapes are not
        pixels = np.rot90(pixels)
    return _png(Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)))


DRIFT_KINDS = ("inverted", "noisy", "rotated")


@functools.cache
def drift_samples(directory: Path, seed: int = 0) -> tuple[Sample, ...]:
    """Held-out digits shifted away from the training data: inverted, noisy and rotated.

    Inverted and noisy digits move the pixel-intensity histogram (pixel_psi); rotated ones
    keep it but move the predicted-class distribution (class_psi).
    """
    rng = np.random.default_rng(seed)
    return tuple(
        Sample(
            f"{DRIFT_KINDS[i % 3]}_{sample.name}",
            _shifted(sample.body, DRIFT_KINDS[i % 3], rng),
            "image/png",
        )
        for i, sample in enumerate(heldout_samples(directory))
    )
