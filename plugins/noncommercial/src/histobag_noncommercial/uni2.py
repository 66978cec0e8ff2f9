"""UNI2-h (Mahmood Lab): a timm ViT-H/14 with SwiGLU MLPs and 8 registers; embedding = CLS."""

from __future__ import annotations

from types import MappingProxyType

import torch
from timm.layers import SwiGLUPacked

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import timm_vit_build

ARCH = "vit_giant_patch14_224"

#: The model card's create_model arguments (they override most of the ViT-g defaults).
TIMM_KWARGS = MappingProxyType(
    {
        "img_size": 224,
        "patch_size": 14,
        "depth": 24,
        "num_heads": 24,
        "init_values": 1e-5,
        "embed_dim": 1536,
        "mlp_ratio": 2.66667 * 2,
        "num_classes": 0,
        "no_embed_class": True,
        "mlp_layer": SwiGLUPacked,
        "act_layer": torch.nn.SiLU,
        "reg_tokens": 8,
        "dynamic_img_size": True,
    }
)


def build_uni2_h(spec: ExtractorSpec) -> ModelBuild:
    """UNI2-h: 1536 features, the class token after the final norm."""
    return timm_vit_build(ARCH, TIMM_KWARGS, pooling="cls")
