"""Virchow2 (Paige): timm's ViT-H/14 with SwiGLU MLPs and 4 registers.

Embedding: the class token ‖ the mean of the patch tokens (registers excluded).
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from timm.layers import SwiGLUPacked

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import timm_vit_build

ARCH = "vit_huge_patch14_224"

#: The ``model_args`` of the published ``config.json``, then the SwiGLU MLP and its
#: activation, which the model card adds to its create_model call.
#: no_embed_class stays False: the position embeddings cover the class and register tokens.
TIMM_KWARGS = MappingProxyType(
    {
        "img_size": 224,
        "init_values": 1e-5,
        "num_classes": 0,
        "reg_tokens": 4,
        "mlp_ratio": 5.3375,
        "global_pool": "",
        "dynamic_img_size": True,
        "mlp_layer": SwiGLUPacked,
        "act_layer": torch.nn.SiLU,
    }
)


def build_virchow2(spec: ExtractorSpec) -> ModelBuild:
    """Virchow2: 2560 features, the class token ‖ the mean of the patch tokens."""
    # The patch mean starts after 1 class + 4 register tokens: the card averages output[:, 5:].
    return timm_vit_build(ARCH, TIMM_KWARGS, pooling="cls+mean")
