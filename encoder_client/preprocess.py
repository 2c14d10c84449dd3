"""Input checks and preprocessing: texts (normalised for the cache key) and images (CLIP-style, with Pillow).

CLIP's preprocessing: decode, convert to RGB, resize so the shortest side matches the model's input (bicubic),
centre-crop to the input size, scale to [0, 1] and normalise each channel with the model's mean and std. A UINT8
pixel input gets the cropped 0..255 values unnormalised (the model normalises). Runs in an executor: decoding and
resizing are CPU work.
"""

from __future__ import annotations

import io
import unicodedata
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from shardsearch.encoder_client.model import ModelInfo
from shardsearch.errors import InvalidArgument

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class InputLimits:
    max_text_bytes: int = 8192
    max_image_bytes: int = 16 * 1024 * 1024
    min_image_side: int = 16
    max_image_pixels: int = 50_000_000


@dataclass(frozen=True)
class PixelSpec:
    layout: str  # "CHW" or "HWC"
    height: int
    width: int
    dtype: str  # numpy dtype name
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def for_model(cls, info: ModelInfo, mean: tuple[float, ...], std: tuple[float, ...]) -> "PixelSpec":
        from shardsearch.encoder_client.model import PIXEL_TYPES

        layout, height, width = info.pixel_layout
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"image mean and std need 3 values each, std > 0 (got {mean}, {std})")
        return cls(layout, height, width, PIXEL_TYPES[info.input_datatype], tuple(mean), tuple(std))  # type: ignore[arg-type]


def normalize_text(text: str, field: str, limits: InputLimits) -> str:
    """NFC, whitespace collapsed and trimmed: the form that is embedded and that keys the cache."""
    clean = " ".join(unicodedata.normalize("NFC", text).split())
    if not clean:
        raise InvalidArgument(f"{field}: the text is empty")
    size = len(clean.encode("utf-8"))
    if size > limits.max_text_bytes:
        raise InvalidArgument(f"{field}: the text is {size} bytes of UTF-8; at most {limits.max_text_bytes} are allowed")
    return clean


def check_image_size(data: bytes, field: str, limits: InputLimits) -> None:
    if not data:
        raise InvalidArgument(f"{field}: the image is empty")
    if len(data) > limits.max_image_bytes:
        raise InvalidArgument(f"{field}: the image is {len(data)} bytes; at most {limits.max_image_bytes} are allowed")


def open_image(data: bytes, field: str, limits: InputLimits) -> Image.Image:
    """Decodes and checks an image, or raises InvalidArgument naming the field and the reason."""
    check_image_size(data, field, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > limits.max_image_pixels:
                raise InvalidArgument(
                    f"{field}: the image is {width}x{height} pixels; at most {limits.max_image_pixels} are allowed"
                )
            if min(width, height) < limits.min_image_side:
                raise InvalidArgument(
                    f"{field}: the image is {width}x{height} pixels; each side must be at least "
                    f"{limits.min_image_side}"
                )
            img.load()
    except InvalidArgument:
        raise
    except UnidentifiedImageError:
        raise InvalidArgument(f"{field}: not an image in a format this server decodes (JPEG, PNG, WebP, GIF, BMP...)") \
            from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidArgument(f"{field}: refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt data
        raise InvalidArgument(f"{field}: the image does not decode ({exc})") from None
    return img


def check_image(data: bytes, field: str, limits: InputLimits) -> None:
    """For server-side preprocessing: the bytes must still be an image of acceptable size."""
    open_image(data, field, limits).close()


def preprocess_image(data: bytes, field: str, spec: PixelSpec, limits: InputLimits) -> np.ndarray:
    """Encoded image -> one model input (spec.layout, spec.dtype)."""
    img = open_image(data, field, limits)
    try:
        rgb = img.convert("RGB")
        scale = max(spec.width / rgb.width, spec.height / rgb.height)  # cover the crop on both sides
        size = (max(spec.width, round(rgb.width * scale)), max(spec.height, round(rgb.height * scale)))
        resized = rgb.resize(size, Image.Resampling.BICUBIC)
        left, top = (resized.width - spec.width) // 2, (resized.height - spec.height) // 2
        pixels = np.asarray(resized.crop((left, top, left + spec.width, top + spec.height)))
    finally:
        img.close()
    if spec.dtype == "uint8":
        out = pixels
    else:
        scaled = pixels.astype(np.float32) / 255.0
        out = (scaled - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "CHW":
        out = out.transpose(2, 0, 1)
    return np.ascontiguousarray(out, dtype=spec.dtype)
