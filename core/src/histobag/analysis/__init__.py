"""Analysis of features: ``DatasetFeatures`` (per-slide activations), statistics, maps.

Importing this package imports nothing heavy; classes load on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DatasetFeatures": "histobag.analysis.dataset_features",
    "Features": "histobag.analysis.features",
    "SlideMap": "histobag.analysis.slidemap",
    "Mosaic": "histobag.analysis.mosaic",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'histobag.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
