"""GPFM (Ma et al. 2025): a DINOv2 ViT-L/14 distilled from several pathology and general
models; embedding = the class token after the final norm (DINOv2's ``x_norm_clstoken``).

The Hugging Face file ``majiabo/GPFM/GPFM.pth`` holds the backbone under timm's
``vit_large_patch14_dinov2`` names (flat, or under ``state_dict``), as TRIDENT loads it.
"""

from __future__ import annotations

from types import MappingProxyType

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import timm_vit_build

ARCH = "vit_large_patch14_dinov2"

#: The official ``vit_large`` arguments (birkhoffkiki/GPFM models/dinov2): 224 px, patch 14,
#: LayerScale 1e-5, plain MLP; position embeddings interpolated for other sizes.
TIMM_KWARGS = MappingProxyType(
    {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True}
)


def build_gpfm(spec: ExtractorSpec) -> ModelBuild:
    """GPFM: 1024 features, the class token after the final norm."""
    return timm_vit_build(ARCH, TIMM_KWARGS, pooling="cls")
