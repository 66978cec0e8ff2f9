"""UNI (Mahmood Lab): timm's ViT-L/16 with LayerScale; embedding = CLS."""

from __future__ import annotations

from types import MappingProxyType

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import timm_vit_build

ARCH = "vit_large_patch16_224"

#: The model card's create_model arguments.
TIMM_KWARGS = MappingProxyType(
    {
        "img_size": 224,
        "patch_size": 16,
        "init_values": 1e-5,
        "num_classes": 0,
        "dynamic_img_size": True,
    }
)


def build_uni(spec: ExtractorSpec) -> ModelBuild:
    """UNI: 1024 features, the class token after the final norm."""
    # dynamic_img_size: position embeddings are interpolated, so any tile size runs.
    return timm_vit_build(ARCH, TIMM_KWARGS, pooling="cls")
