"""histobag: feature bags from whole-slide images with pretrained, separately licensed models.

Everything heavy is imported on first use, so ``import histobag`` and
:func:`list_extractors` stay fast and never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Registers what ``extractor(wsi)`` and ``extractor("x.tfrecords")`` run (no torch imported).
from histobag import extraction as _extraction  # noqa: F401
from histobag._version import __version__
from histobag.errors import HistobagError
from histobag.extractors.registry import build_feature_extractor, extractor_info, list_extractors
from histobag.hookspecs import hookimpl
from histobag.plugins import (
    plugin_failures,
    register_extractor,
    register_plugin,
    unregister_plugin,
)
from histobag.specs import BagWriterSpec, ExtractorSpec, Preprocessing, SlideInput, TransformSpec

if TYPE_CHECKING:
    from histobag.analysis import DatasetFeatures, Features, Mosaic, SlideMap
    from histobag.bags.generate import generate_feature_bags
    from histobag.bags.read import rebuild_extractor
    from histobag.dataset import Dataset
    from histobag.extractors.base import FeatureExtractor, ModelBuild
    from histobag.extractors.saved import save_model
    from histobag.project import Project
    from histobag.slide import WSI
    from histobag.slide_encoding import SlideEncoderExtractor, generate_slide_embeddings, zero_shot

# Public names loaded lazily: name -> module that defines it.
_LAZY = {
    "FeatureExtractor": "histobag.extractors.base",
    "ModelBuild": "histobag.extractors.base",
    "WSI": "histobag.slide",
    "Dataset": "histobag.dataset",
    "Project": "histobag.project",
    "rebuild_extractor": "histobag.bags.read",
    "generate_feature_bags": "histobag.bags.generate",
    "DatasetFeatures": "histobag.analysis",
    "Features": "histobag.analysis",
    "SlideMap": "histobag.analysis",
    "Mosaic": "histobag.analysis",
    "data": "histobag.data",
    "save_model": "histobag.extractors.saved",
    "SlideEncoderExtractor": "histobag.slide_encoding",
    "generate_slide_embeddings": "histobag.slide_encoding",
    "zero_shot": "histobag.slide_encoding",
}

__all__ = [
    "BagWriterSpec",
    "ExtractorSpec",
    "HistobagError",
    "Preprocessing",
    "SlideInput",
    "TransformSpec",
    "__version__",
    "build_feature_extractor",
    "extractor_info",
    "hookimpl",
    "list_extractors",
    "plugin_failures",
    "register_extractor",
    "register_plugin",
    "unregister_plugin",
    # loaded lazily (see _LAZY)
    "Dataset",
    "DatasetFeatures",
    "FeatureExtractor",
    "Features",
    "ModelBuild",
    "Mosaic",
    "Project",
    "SlideEncoderExtractor",
    "SlideMap",
    "WSI",
    "data",
    "generate_feature_bags",
    "generate_slide_embeddings",
    "rebuild_extractor",
    "save_model",
    "zero_shot",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'histobag' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if module.endswith("." + name) else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
