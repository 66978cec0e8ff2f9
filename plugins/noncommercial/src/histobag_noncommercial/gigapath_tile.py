"""Prov-GigaPath tile encoder: timm's DINOv2 ViT-g with 16 px patches; embedding = CLS."""

from __future__ import annotations

from types import MappingProxyType

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import timm_vit_build

ARCH = "vit_giant_patch14_dinov2"

#: The ``model_args`` of the published ``config.json`` (the architecture name says patch 14,
#: but GigaPath overrides it with 16).
TIMM_KWARGS = MappingProxyType(
    {
        "img_size": 224,
        "in_chans": 3,
        "patch_size": 16,
        "embed_dim": 1536,
        "depth": 40,
        "num_heads": 24,
        "init_values": 1e-5,
        "mlp_ratio": 5.33334,
        "num_classes": 0,
    }
)


def build_gigapath_tile(spec: ExtractorSpec) -> ModelBuild:
    """GigaPath tile encoder: 1536 features, the class token after the final norm."""
    return timm_vit_build(ARCH, TIMM_KWARGS, pooling="cls")
