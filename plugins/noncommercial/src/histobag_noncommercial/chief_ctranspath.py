"""CHIEF-CTransPath: the CTransPath network with the tile-encoder weights CHIEF trained.

CHIEF's ``models/ctran.py`` is CTransPath's: timm 0.5.4's ``swin_tiny_patch4_window7_224``
with the convolutional stem, head replaced by an identity, and ``CHIEF_CTransPath.pth`` is
``{'model': state_dict}`` in that timm 0.5.4 layout, as ``ctranspath.pth`` is. The network,
its key renaming and its saved buffers are histobag-gpl's
(:func:`histobag_gpl.ctranspath.build_ctranspath`), imported when the model is built, so
listing this pack never needs histobag-gpl.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from histobag import ExtractorSpec
from histobag.errors import MissingDependencyError
from histobag.extractors.base import ModelBuild

#: The module holding the CTransPath network.
CTRANSPATH_MODULE = "histobag_gpl.ctranspath"


def ctranspath_module(model: str) -> ModuleType:
    """histobag-gpl's CTransPath module, or an error saying how to install it.

    Raises:
        MissingDependencyError: histobag-gpl is not installed.
    """
    try:
        return importlib.import_module(CTRANSPATH_MODULE)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{model!r} runs the CTransPath network of histobag-gpl, which is not installed: "
            "pip install histobag-gpl",
            module=CTRANSPATH_MODULE,
            extra="chief",
        ) from exc


def build_chief_ctranspath(spec: ExtractorSpec) -> ModelBuild:
    """Build CHIEF-CTransPath: (B, 3, 224, 224) normalised tiles → (B, 768) embeddings.

    Args:
        spec: The ``chief-ctranspath`` spec.
    """
    return ctranspath_module(spec.name).build_ctranspath(spec)
