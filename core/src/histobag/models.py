"""Deprecated alias of :mod:`histobag.extractors.saved` (renamed in 0.3, removed in 0.4)."""

from histobag._deprecated import warn_moved
from histobag.extractors.saved import (
    SavedModelExtractor,
    extractor_from_saved_model,
    is_saved_model,
    read_model_config,
    save_model,
)

__all__ = [
    "SavedModelExtractor",
    "extractor_from_saved_model",
    "is_saved_model",
    "read_model_config",
    "save_model",
]

warn_moved("histobag.models", "histobag.extractors.saved")
