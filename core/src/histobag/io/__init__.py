"""File formats: slideflow-compatible TFRecords, tile images, and feature bags.

Submodules are imported on first use (``histobag.io.TFRecordReader`` loads
:mod:`histobag.io.tfrecord`), so importing this package costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TFRecordReader", "TFRecordWriter", "decode_image", "encode_image"]

_LAZY = {
    "TFRecordReader": "histobag.io.tfrecord",
    "TFRecordWriter": "histobag.io.tfrecord",
    "decode_image": "histobag.io.images",
    "encode_image": "histobag.io.images",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'histobag.io' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
