"""H-optimus-0 (Bioptimus): timm's DINOv2 ViT-g/14 with 4 registers; embedding = CLS."""

from __future__ import annotations

from types import MappingProxyType

import timm
from timm.models import VisionTransformer

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import token_pooling_build

ARCH = "vit_giant_patch14_reg4_dinov2"

#: The arguments of the published ``config.json`` plus the model card's create_model call.
TIMM_KWARGS = MappingProxyType(
    {
        "img_size": 224,
        "init_values": 1e-5,
        "dynamic_img_size": False,
        "global_pool": "token",
        "num_classes": 0,
    }
)


def build_network(*, depth: int | None = None) -> VisionTransformer:
    """H-optimus-0's backbone with random weights; ``depth`` overrides the block count (tests)."""
    kwargs = dict(TIMM_KWARGS) if depth is None else {**TIMM_KWARGS, "depth": depth}
    return timm.create_model(ARCH, pretrained=False, **kwargs)


def build_h_optimus_0(spec: ExtractorSpec) -> ModelBuild:
    """H-optimus-0: 1536 features, the class token after the final norm."""
    network = build_network()
    return token_pooling_build(
        network,
        pooling="cls",
        num_prefix_tokens=network.num_prefix_tokens,
        fixed_input_size=spec.input_size,  # dynamic_img_size=False: 224 px only
    )
