"""Virchow (Paige): timm's ViT-H/14 with SwiGLU MLPs; embedding = CLS ‖ mean of patch tokens."""

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
TIMM_KWARGS = MappingProxyType(
    {
        "img_size": 224,
        "init_values": 1e-5,
        "mlp_ratio": 5.3375,
        "mlp_layer": SwiGLUPacked,
        "act_layer": torch.nn.SiLU,
        "global_pool": "",
        "num_classes": 0,
    }
)


def build_network(*, depth: int | None = None) -> VisionTransformer:
    """Virchow's backbone with random weights; ``depth`` overrides the block count (tests)."""
    kwargs = dict(TIMM_KWARGS) if depth is None else {**TIMM_KWARGS, "depth": depth}
    return timm.create_model(ARCH, pretrained=False, **kwargs)


def build_virchow(spec: ExtractorSpec) -> ModelBuild:
    """Virchow: 2560 features, the class token ‖ the mean of the 256 patch tokens."""
    network = build_network()
    # No dynamic_img_size in the published config: the position embeddings fit 224 px only.
    return token_pooling_build(
        network,
        pooling="cls+mean",
        num_prefix_tokens=network.num_prefix_tokens,
        fixed_input_size=spec.input_size,
    )
