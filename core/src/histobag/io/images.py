"""JPEG / PNG encoding and decoding of uint8 RGB tiles (Pillow)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from histobag.errors import HistobagError

__all__ = ["decode_image", "encode_image", "normalize_format"]

_FORMATS = {"jpg": "jpg", "jpeg": "jpg", "png": "png"}


def normalize_format(img_format: str) -> str:
    """``'jpg'`` or ``'png'`` for any spelling of the two (``'JPEG'``, ``'.png'``, ...).

    Raises:
        HistobagError: Another format was asked for.
    """
    key = str(img_format).lower().lstrip(".")
    if key not in _FORMATS:
        raise HistobagError(f"Unsupported image format {img_format!r}; use 'jpg' or 'png'.")
    return _FORMATS[key]


def encode_image(tile: np.ndarray, img_format: str = "jpg", quality: int = 95) -> bytes:
    """Encode a uint8 (H, W, 3) RGB tile as JPEG or PNG bytes.

    JPEG uses Pillow's defaults besides ``quality`` (4:2:0 chroma subsampling, baseline), so the
    same pixels always give the same bytes. PNG is lossless; ``quality`` is ignored.

    Args:
        tile: uint8 array (H, W, 3).
        img_format: ``'jpg'`` or ``'png'``.
        quality: JPEG quality, 1-100.
    """
    fmt = normalize_format(img_format)
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(tile, dtype=np.uint8))
    if fmt == "jpg":
        image.save(buffer, format="JPEG", quality=int(quality))
    else:
        image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Decode JPEG or PNG bytes to a uint8 (H, W, 3) RGB array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
