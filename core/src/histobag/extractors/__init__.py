"""Extractor specs, the registry, and the ``FeatureExtractor`` wrapper.

Importing this package imports no torch; :class:`FeatureExtractor` and :class:`ModelBuild`
are loaded on first access.
"""

from __future__ import annotations

from typing import Any

from histobag.extractors.registry import (
    RANDOM_WEIGHTS,
    build_feature_extractor,
    extractor_info,
    list_extractors,
)
from histobag.extractors.spec import ExtractorSpec, Preprocessing

__all__ = [
    "RANDOM_WEIGHTS",
    "ExtractorSpec",
    "FeatureExtractor",
    "ModelBuild",
    "Preprocessing",
    "build_feature_extractor",
    "extractor_info",
    "list_extractors",
]


def __getattr__(name: str) -> Any:
    if name in ("FeatureExtractor", "ModelBuild"):
        from histobag.extractors import base

        return getattr(base, name)
    raise AttributeError(f"module 'histobag.extractors' has no attribute {name!r}")
