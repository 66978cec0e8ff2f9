"""Lunit's DINO ViT-S/8, as the repository's README builds it; embedding = CLS.

The README creates timm's ``VisionTransformer(img_size=224, patch_size=8, embed_dim=384,
num_heads=6, num_classes=0)`` and loads the release file into it strictly, keys unchanged;
``vit_small_patch8_224`` with ``num_classes=0`` is that network. Its class token after the
final norm (timm's ``global_pool="token"``) is what the network returns.
"""

from __future__ import annotations

from types import MappingProxyType

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import timm_vit_build

ARCH = "vit_small_patch8_224"

#: The README's arguments beyond the architecture's defaults.
TIMM_KWARGS = MappingProxyType({"img_size": 224, "num_classes": 0})


def build_lunit_vits8(spec: ExtractorSpec) -> ModelBuild:
    """Lunit DINO ViT-S/8: 384 features, the class token; 224 px input only."""
    return timm_vit_build(ARCH, TIMM_KWARGS, pooling="cls")
