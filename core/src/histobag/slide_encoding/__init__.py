"""Slide encoders: one embedding per slide from its tile features.

- :class:`SlideEncoderExtractor`: what every slide encoder (kind ``"tile_features"``) is;
- :func:`generate_slide_embeddings`: a bags folder in, one embedding per slide and a table
  out (resumable, checked against what the model was trained on);
- :func:`check_bags`: that check alone;
- :func:`zero_shot`: class probabilities from prompts, for models with a text tower;
- ``mean:<tile encoder>``: mean pooling of any tile encoder's features
  (:mod:`.mean_pooling`).

Names load lazily: the command line plans a run (:mod:`.plan`) without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from histobag.slide_encoding.extractor import SlideEncoderExtractor
    from histobag.slide_encoding.pipeline import (
        SlideEmbeddingsReport,
        generate_slide_embeddings,
        read_slide_embeddings,
        read_table,
        write_table,
    )
    from histobag.slide_encoding.requirements import BagCheck, check_bags
    from histobag.slide_encoding.zero_shot import class_embeddings, zero_shot

_LAZY = {
    "SlideEncoderExtractor": "extractor",
    "SlideEmbeddingsReport": "pipeline",
    "generate_slide_embeddings": "pipeline",
    "read_slide_embeddings": "pipeline",
    "read_table": "pipeline",
    "write_table": "pipeline",
    "BagCheck": "requirements",
    "check_bags": "requirements",
    "class_embeddings": "zero_shot",
    "zero_shot": "zero_shot",
}

__all__ = [
    "BagCheck",
    "SlideEmbeddingsReport",
    "SlideEncoderExtractor",
    "check_bags",
    "class_embeddings",
    "generate_slide_embeddings",
    "read_slide_embeddings",
    "read_table",
    "write_table",
    "zero_shot",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'histobag.slide_encoding' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"histobag.slide_encoding.{module}"), name)
    globals()[name] = value
    return value
