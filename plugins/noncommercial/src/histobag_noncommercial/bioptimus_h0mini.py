"""H0-mini (Bioptimus): a timm DINOv2 ViT-B/14 with 4 registers and SwiGLU MLPs.

Distilled from H-optimus-0. The model card creates it as
``timm.create_model("hf-hub:bioptimus/H0-mini", mlp_layer=SwiGLUPacked, act_layer=SiLU)``
and its forward returns every token (``global_pool=""``): the class token, 4 registers, then
the patch tokens. The card shows two embeddings: the class token (768-d) and the class token
concatenated with the mean of the patch tokens (1536-d); both are registered.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from timm.layers import SwiGLUPacked

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import timm_vit_build

ARCH = "vit_base_patch14_reg4_dinov2"

#: The hub ``config.json``'s model arguments plus the card's create_model arguments. The packed
#: SwiGLU's first layer is 768 -> 4096 (two halves of 2048), hence ``mlp_ratio`` 5.33334.
TIMM_KWARGS = MappingProxyType(
    {
        "img_size": 224,
        "init_values": 1e-5,
        "reg_tokens": 4,
        "mlp_ratio": 5.33334,
        "mlp_layer": SwiGLUPacked,
        "act_layer": torch.nn.SiLU,
        "num_classes": 0,
        "global_pool": "",
        "dynamic_img_size": False,
    }
)


def build_h0_mini(spec: ExtractorSpec) -> ModelBuild:
    """H0-mini: 768 features, the class token after the final norm."""
    return timm_vit_build(ARCH, TIMM_KWARGS, pooling="cls")


def build_h0_mini_cls_mean(spec: ExtractorSpec) -> ModelBuild:
    """H0-mini: 1536 features, the class token then the mean of the 256 patch tokens (the 4
    registers left out), as the card's concatenated features."""
    return timm_vit_build(ARCH, TIMM_KWARGS, pooling="cls+mean")
