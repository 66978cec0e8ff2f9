"""Analysis of features: ``DatasetFeatures`` (per-slide activations), statistics, maps.

Importing this package imports nothing heavy; classes load on first access. Maps need the
``histobag[analysis]`` extra (umap-learn, matplotlib, pyarrow): without it, ``SlideMap`` and
``Mosaic`` raise :class:`~histobag.errors.MissingDependencyError` naming the extra on first
access. ``Features``, ``DatasetFeatures`` and their statistics need only the core; their
figures need matplotlib and ask for the extra when drawn.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from histobag.optional import require

if TYPE_CHECKING:
    from histobag.analysis.dataset_features import DatasetFeatures
    from histobag.analysis.features import Features
    from histobag.analysis.mosaic import Mosaic
    from histobag.analysis.slidemap import SlideMap

_LAZY = {
    "DatasetFeatures": "histobag.analysis.dataset_features",
    "Features": "histobag.analysis.features",
    "SlideMap": "histobag.analysis.slidemap",
    "Mosaic": "histobag.analysis.mosaic",
}

#: What the ``histobag[analysis]`` extra installs that a map cannot work without.
MAP_MODULES = ("umap", "matplotlib")
#: Public names that need modules of the extra from the start: name -> modules.
_NEEDS = {"SlideMap": MAP_MODULES, "Mosaic": MAP_MODULES}

__all__ = ["DatasetFeatures", "Features", "Mosaic", "SlideMap"]


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it (umap-learn takes
    seconds to import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked package counts as missing
        return False


def require_extra(purpose: str, modules: Sequence[str] = MAP_MODULES) -> None:
    """Raise :class:`~histobag.errors.MissingDependencyError` naming ``histobag[analysis]``
    when one of ``modules`` is not installed.

    Args:
        purpose: What needs them, for the message (``"histobag.SlideMap"``, ``"histobag umap"``).
        modules: Top-level modules to look for (default: what a map needs).
    """
    for module in modules:
        if not _installed(module):
            require(module, extra="analysis", purpose=purpose)  # raises, naming the extra


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'histobag.analysis' has no attribute {name!r}")
    if name in _NEEDS:
        require_extra(f"histobag.{name}", _NEEDS[name])
    return getattr(importlib.import_module(_LAZY[name]), name)
