"""Image validation and conversion into the model's input tensor. No HTTP here.

What the tensor must look like (shape, colour mode, scale and normalisation) comes from the
classifier's model metadata, so a different model needs no code change here.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from servescope.runtime.errors import ServiceError

ACCEPTED_FORMATS = {"PNG", "JPEG"}
# Formats Pillow may identify so that we can name them in the error; never decoded.
IDENTIFIABLE_FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]
SUPPORTED_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "I;16"}


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int
    min_side: int


@dataclass(frozen=True)
class InputSpec:
    """The model input as preprocess needs it, read from OIP model metadata."""

    name: str
    datatype: str
    channels: int
    height: int
    width: int
    scale: float
    mean: float
    std: float

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> InputSpec:
        inputs = metadata.get("inputs") or []
        if len(inputs) != 1:
            raise ValueError(f"expected a model with one input, got {len(inputs)}")
        tensor = inputs[0]
        shape = list(tensor.get("shape") or [])
        # NCHW with a dynamic or unit batch dimension: the layout of the bundled model and
        # of most vision models exported from PyTorch.
        if len(shape) != 4 or shape[0] not in (-1, 1) or shape[1] not in (1, 3):
            raise ValueError(f"unsupported input shape {shape}; expected [batch, 1|3, H, W]")
        if tensor.get("datatype") != "FP32":
            raise ValueError(f"unsupported input datatype {tensor.get('datatype')}; expected FP32")
        params = metadata.get("parameters") or {}
        spec = cls(
            name=str(tensor["name"]),
            datatype="FP32",
            channels=int(shape[1]),
            height=int(shape[2]),
            width=int(shape[3]),
            scale=float(params.get("input_scale", 1 / 255)),
            mean=float(params.get("normalize_mean", 0.0)),
            std=float(params.get("normalize_std", 1.0)),
        )
        if spec.height <= 0 or spec.width <= 0 or spec.std == 0 or not math.isfinite(spec.scale):
            raise ValueError(f"unusable input spec from metadata: {spec}")
        return spec

    @property
    def shape(self) -> list[int]:
        return [1, self.channels, self.height, self.width]


def _reject(status: int, kind: str, message: str) -> ServiceError:
    return ServiceError(status, kind, message, stage="decode")


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open, check and fully decode one PNG or JPEG, or raise a ServiceError saying why not."""
    if not data:
        raise _reject(422, "empty_body", "the request carried no image bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=IDENTIFIABLE_FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow refuses images over twice its own pixel limit already while opening.
        raise _reject(
            413, "image_too_large", f"image is larger than the limit of {limits.max_pixels} pixels"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        # A header cut short (inside PNG's IHDR, a JPEG APP segment) fails while opening with
        # OSError("Truncated File Read") or ValueError, not UnidentifiedImageError.
        raise _reject(
            422, "undecodable_image", "the body is not a readable PNG or JPEG image"
        ) from exc
    if image.format not in ACCEPTED_FORMATS:
        raise _reject(
            415,
            "unsupported_media_type",
            f"{image.format} images are not accepted; send PNG or JPEG",
        )
    width, height = image.size
    # Checked from the header alone: a 20000x20000 bomb is refused before decoding a pixel.
    if width * height > limits.max_pixels:
        raise _reject(
            413,
            "image_too_large",
            f"image is {width}x{height} ({width * height} pixels); the limit is "
            f"{limits.max_pixels} pixels",
        )
    if min(width, height) < limits.min_side:
        raise _reject(
            422,
            "image_too_small",
            f"image is {width}x{height}; both sides must be at least {limits.min_side} pixels",
        )
    if getattr(image, "is_animated", False):
        raise _reject(422, "animated_image", "animated images are not accepted; send one frame")
    if image.mode not in SUPPORTED_MODES:
        raise _reject(
            422,
            "unsupported_color_mode",
            f"colour mode {image.mode} is not supported; send grayscale or RGB",
        )
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise _reject(413, "image_too_large", "image exceeds the decoder's pixel limit") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated and corrupt streams as OSError or SyntaxError.
        raise _reject(
            422, "undecodable_image", f"the image data is corrupt or truncated: {exc}"
        ) from exc
    return image


def to_tensor(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Resize and normalise into a float32 NCHW array of batch 1."""
    return normalise(resize(image, spec), spec)


def resize(image: Image.Image, spec: InputSpec) -> Image.Image:
    """The model's colour mode and size; transparency composited on black."""
    if image.mode in ("LA", "PA", "RGBA", "P") and (
        image.mode != "P" or "transparency" in image.info
    ):
        # Transparent pixels count as background (black), the digits' convention.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if spec.channels == 1 else "RGB")
    if image.size != (spec.width, spec.height):
        shrinking = image.width > spec.width or image.height > spec.height
        # BOX averages every source pixel when shrinking; BILINEAR is smooth when enlarging.
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
        image = image.resize((spec.width, spec.height), resample)
    return image


def normalise(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Scale and standardise pixels into a float32 NCHW array of batch 1."""
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels[np.newaxis, :, :] if spec.channels == 1 else pixels.transpose(2, 0, 1)
    scaled = pixels * np.float32(spec.scale)
    normalised = (scaled - np.float32(spec.mean)) / np.float32(spec.std)
    return normalised[np.newaxis].astype(np.float32, copy=False)
