"""Virchow2 (Paige): timm's ViT-H/14 with SwiGLU MLPs and 4 registers.

Embedding: the class token ‖ the mean of the patch tokens (registers excluded).
"""

from __future__ import annotations

from types import MappingProxyType

import timm
import torch
from timm.layers import SwiGLUPacked
from timm.models import VisionTransformer

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import token_pooling_build

ARCH = "vit_huge_patch14_224"

#: The arguments of the published ``config.json`` plus the model card's create_model call.
#: no_embed_class stays False: the position embeddings cover the class and register tokens.
TIMM_KWARGS = MappingProxyType(
    {
        "img_size": 224,
        "init_values": 1e-5,
        "mlp_ratio": 5.3375,
        "mlp_layer": SwiGLUPacked,
        "act_layer": torch.nn.SiLU,
        "reg_tokens": 4,
        "global_pool": "",
        "num_classes": 0,
        "dynamic_img_size": True,
    }
)


def build_network(*, depth: int | None = None) -> VisionTransformer:
    """Virchow2's backbone with random weights; ``depth`` overrides the block count (tests)."""
    kwargs = dict(TIMM_KWARGS) if depth is None else {**TIMM_KWARGS, "depth": depth}
    return timm.create_model(ARCH, pretrained=False, **kwargs)


def build_virchow2(spec: ExtractorSpec) -> ModelBuild:
    """Virchow2: 2560 features, the class token ‖ the mean of the patch tokens."""
    network = build_network()
    # num_prefix_tokens = 1 class + 4 registers: the model card averages output[:, 5:].
    return token_pooling_build(
        network, pooling="cls+mean", num_prefix_tokens=network.num_prefix_tokens
    )
