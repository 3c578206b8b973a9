"""inputs.py: the held-out digits and the fixed set of bad inputs the generator sends."""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from servescope.cli.paths import heldout_dir
from servescope.loadgen.inputs import bad_samples, heldout_samples, png_bomb

HELDOUT = Path(__file__).resolve().parents[2] / "classifier" / "model" / "heldout"


def test_heldout_samples_are_the_360_labelled_pngs() -> None:
    samples = heldout_samples(heldout_dir())
    assert len(samples) == 360
    assert len({s.name for s in samples}) == 360
    assert {s.name for s in samples} == {p.name for p in HELDOUT.glob("*.png")}
    for sample in samples:
        match = re.fullmatch(r"(\d{4})_(\d)\.png", sample.name)
        assert match, sample.name
        assert sample.label == match.group(2)
        assert sample.content_type == "image/png"
        assert sample.body == (HELDOUT / sample.name).read_bytes()
    assert {s.label for s in samples} == {str(d) for d in range(10)}


def test_png_bomb_is_a_valid_20000_square_png(monkeypatch) -> None:
    bomb = png_bomb()
    # The header, read by hand.
    assert bomb[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind, width, height, depth, colour = struct.unpack(">I4sIIBB", bomb[8:26])
    assert (length, kind, width, height, depth, colour) == (13, b"IHDR", 20_000, 20_000, 8, 0)
    assert struct.unpack(">I", bomb[29:33])[0] == zlib.crc32(bomb[12:29])
    assert bomb.endswith(b"\x00\x00\x00\x00IEND\xaeB`\x82")
    # Pillow reads the size from the header alone (its own bomb guard turned off for this).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    image = Image.open(io.BytesIO(bomb))
    assert image.format == "PNG"
    assert image.size == (20_000, 20_000)
    assert image.mode == "L"
    # The first decompressed row is a filter byte and 20000 black pixels.
    idat_length = struct.unpack(">I", bomb[33:37])[0]
    assert bomb[37:41] == b"IDAT"
    stream = zlib.decompressobj()
    first_row = stream.decompress(bomb[41 : 41 + idat_length], 20_001)
    assert first_row == b"\x00" * 20_001
    assert len(bomb) < 1_000_000


def test_png_bomb_size_is_a_parameter() -> None:
    small = png_bomb(16)
    image = Image.open(io.BytesIO(small))
    image.load()  # small enough to decode for real
    assert image.size == (16, 16)
    assert image.getextrema() == (0, 0)


def test_bad_sample_names_are_unique_and_bodies_differ_from_digits() -> None:
    samples = bad_samples()
    names = [s.name for s in samples]
    assert len(names) == len(set(names))
    assert all(s.label is None for s in samples)
    digits = {s.body for s in heldout_samples(heldout_dir())}
    assert not any(s.body in digits and s.content_type.startswith("image/") for s in samples)


@pytest.mark.parametrize("limit", [4096, 4 * 1024 * 1024])
def test_huge_body_is_over_the_given_limit(limit: int) -> None:
    huge = {s.name: s for s in bad_samples(limit)}["huge_body"]
    assert len(huge.body) > limit


def test_bad_samples_are_what_their_names_say() -> None:
    samples = {s.name: s for s in bad_samples()}
    assert samples["empty_body"].body == b""
    assert samples["text"].content_type == "text/plain"
    assert Image.open(io.BytesIO(samples["one_pixel"].body)).size == (1, 1)
    cmyk = Image.open(io.BytesIO(samples["cmyk_jpeg"].body))
    assert (cmyk.format, cmyk.mode) == ("JPEG", "CMYK")
    gif = Image.open(io.BytesIO(samples["animated_gif"].body))
    assert gif.format == "GIF"
    assert gif.is_animated
    digit = samples["wrong_content_type"].body
    assert Image.open(io.BytesIO(digit)).format == "PNG"  # a valid image, wrongly labelled
    assert samples["truncated_png"].body == digit[: len(digit) // 2]
    assert samples["wrong_content_type"].content_type == "application/json"
