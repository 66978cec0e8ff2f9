"""Specs of kaiko.ai's pathology ViTs ("Towards large-scale training of pathology foundation
models"): ViT-S/8, ViT-S/16, ViT-B/8, ViT-B/16 and ViT-L/14.

kaiko.ai publishes the weights as GitHub release files loaded by its ``torch.hub`` entry points
(``kaiko-ai/towards_large_pathology_fms``, ``hubconf.py``); the Hub copies used by default are
1aurent's ``timm`` conversions of those files (``model.safetensors``), the ones TRIDENT loads.
A release file passed as ``weights=`` loads too. Plain data: listing imports no torch or timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import SpecTable, pil_resize_crop

KAIKO_LICENSE = "LicenseRef-kaiko-non-commercial"
KAIKO_LICENSE_URL = "https://github.com/kaiko-ai/towards_large_pathology_fms/blob/main/LICENSE"

#: The normalisation of the repository's example pipeline (pixels scaled to [-1, 1]).
KAIKO_MEAN = (0.5, 0.5, 0.5)
KAIKO_STD = (0.5, 0.5, 0.5)

#: Open ``model.safetensors`` files on the Hub, 224 px input, Kaiko Non-Commercial licence.
TABLE = SpecTable(
    "histobag_noncommercial",
    KAIKO_LICENSE,
    KAIKO_LICENSE_URL,
    tags=("foundation", "pathology", "vit"),
    filename="model.safetensors",
)

# The README's v2 pipeline: Resize(224) (bilinear, antialiased), CenterCrop(224), [-1, 1].
_KAIKO_PRE = pil_resize_crop(224, 224, interpolation="bilinear", mean=KAIKO_MEAN, std=KAIKO_STD)

_MIRROR = "1aurent/{arch}.kaiko_ai_towards_large_pathology_fms"
_KEY = "ai2024largescale"

#: name: (factory module, Hub repository, BibTeX key, num_features, preprocessing).
MODELS: dict[str, tuple[str, str, str, int, Preprocessing]] = {
    "kaiko-vits8": ("kaiko", _MIRROR.format(arch="vit_small_patch8_224"), _KEY, 384, _KAIKO_PRE),
    "kaiko-vits16": ("kaiko", _MIRROR.format(arch="vit_small_patch16_224"), _KEY, 384, _KAIKO_PRE),
    "kaiko-vitb8": ("kaiko", _MIRROR.format(arch="vit_base_patch8_224"), _KEY, 768, _KAIKO_PRE),
    "kaiko-vitb16": ("kaiko", _MIRROR.format(arch="vit_base_patch16_224"), _KEY, 768, _KAIKO_PRE),
    "kaiko-vitl14": (
        "kaiko",
        _MIRROR.format(arch="vit_large_patch14_reg4_dinov2"),
        _KEY,
        1024,
        _KAIKO_PRE,
    ),
}

_ABOUT = {
    "kaiko-vits8": "kaiko.ai ViT-S/8; CLS; non-commercial",
    "kaiko-vits16": "kaiko.ai ViT-S/16; CLS; non-commercial",
    "kaiko-vitb8": "kaiko.ai ViT-B/8; CLS; non-commercial",
    "kaiko-vitb16": "kaiko.ai ViT-B/16; CLS; non-commercial",
    "kaiko-vitl14": "kaiko.ai ViT-L/14, 4 registers; CLS; non-commercial",
}


def specs() -> list[ExtractorSpec]:
    """Return the kaiko.ai models."""
    return [TABLE.spec(name, *row, description=_ABOUT[name]) for name, row in MODELS.items()]
