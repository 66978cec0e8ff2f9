"""Spec of Midnight-12k (kaiko.ai), MIT-licensed weights in transformers' ``Dinov2Model`` layout.

Plain data: the factory is a ``"module:attr"`` string, so listing imports no torch or timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import SpecTable, pil_resize_crop

MIT_URL = "https://huggingface.co/kaiko-ai/midnight"

#: An open ``model.safetensors`` on the Hub; the model card states the MIT licence.
TABLE = SpecTable(
    "histobag_apache",
    "MIT",
    MIT_URL,
    tags=("foundation", "pathology", "vit"),
    filename="model.safetensors",
)

#: The card's normalisation (pixels scaled to [-1, 1]).
MIDNIGHT_MEAN = (0.5, 0.5, 0.5)
MIDNIGHT_STD = (0.5, 0.5, 0.5)

# The card's v2 pipeline on PIL images: Resize(224) (bilinear), CenterCrop(224), [-1, 1].
_MIDNIGHT_PRE = pil_resize_crop(
    224, 224, interpolation="bilinear", mean=MIDNIGHT_MEAN, std=MIDNIGHT_STD
)

#: name: (factory module, Hub repository, BibTeX key, num_features, preprocessing).
MODELS: dict[str, tuple[str, str, str, int, Preprocessing]] = {
    "midnight-12k": (
        "midnight",
        "kaiko-ai/midnight",
        "karasikov2025midnight",
        3072,
        _MIDNIGHT_PRE,
    ),
}

_ABOUT = {
    "midnight-12k": (
        "Midnight-12k DINOv2 ViT-g/14 (kaiko.ai, 12k TCGA slides); CLS ‖ mean patch token"
    ),
}

_ALIASES = {"midnight-12k": ("midnight12k",)}


def specs() -> list[ExtractorSpec]:
    """Return Midnight-12k."""
    return [
        TABLE.spec(name, *row, description=_ABOUT[name], aliases=_ALIASES.get(name, ()))
        for name, row in MODELS.items()
    ]
