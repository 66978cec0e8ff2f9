"""Extractor specs, the registry, and the ``FeatureExtractor`` wrapper.

Importing this package imports no torch (models are built, and torch imported, on demand).
"""

from __future__ import annotations

from histobag.extractors.base import FeatureExtractor, ModelBuild
from histobag.extractors.preprocess import PreprocessingOverrides
from histobag.extractors.registry import (
    RANDOM_WEIGHTS,
    build_feature_extractor,
    extractor_info,
    list_extractors,
)
from histobag.specs import ExtractorSpec, Preprocessing

__all__ = [
    "RANDOM_WEIGHTS",
    "ExtractorSpec",
    "FeatureExtractor",
    "ModelBuild",
    "Preprocessing",
    "PreprocessingOverrides",
    "build_feature_extractor",
    "extractor_info",
    "list_extractors",
]
