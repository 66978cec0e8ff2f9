"""Specs of Hibou-B and Hibou-L (HistAI), Apache-2.0 weights in transformers' layout.

Plain data: the factories are ``"module:attr"`` strings, so listing imports no torch or timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import SpecTable, pil_resize_crop
from histobag_apache.foundation_specs import APACHE_URL

_TAGS = ("foundation", "pathology", "vit")
_PACKAGE = "histobag_apache"
_FILE = "model.safetensors"

#: Hibou-B's repository is open; Hibou-L's asks for contact details first.
OPEN = SpecTable(_PACKAGE, "Apache-2.0", APACHE_URL, tags=_TAGS, filename=_FILE)
GATED = SpecTable(_PACKAGE, "Apache-2.0", APACHE_URL, tags=_TAGS, gated=True, filename=_FILE)

#: HistAI's normalisation, from the official repository's example pipeline.
HIBOU_MEAN = (0.7068, 0.5755, 0.7220)
HIBOU_STD = (0.1950, 0.2316, 0.1816)

# The official example: Resize((224, 224), bicubic), CenterCrop(224), on PIL images.
_HIBOU_PRE = pil_resize_crop(224, 224, interpolation="bicubic", mean=HIBOU_MEAN, std=HIBOU_STD)

#: name: (table, factory module, Hub repository, BibTeX key, num_features, preprocessing).
MODELS: dict[str, tuple[SpecTable, str, str, str, int, Preprocessing]] = {
    "hibou-b": (OPEN, "hibou", "histai/hibou-b", "nechaev2024hibou", 768, _HIBOU_PRE),
    "hibou-l": (GATED, "hibou", "histai/hibou-L", "nechaev2024hibou", 1024, _HIBOU_PRE),
}

_ABOUT = {
    "hibou-b": "Hibou-B DINOv2 ViT-B/14, 4 registers (HistAI, 512M tiles); CLS",
    "hibou-l": "Hibou-L DINOv2 ViT-L/14, 4 registers (HistAI, 1.2B tiles); CLS",
}


def specs() -> list[ExtractorSpec]:
    """Return Hibou-B and Hibou-L."""
    return [
        table.spec(name, *row, description=_ABOUT[name]) for name, (table, *row) in MODELS.items()
    ]
