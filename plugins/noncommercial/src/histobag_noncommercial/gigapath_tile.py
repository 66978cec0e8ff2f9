"""Prov-GigaPath tile encoder: timm's DINOv2 ViT-g with 16 px patches; embedding = CLS."""

from __future__ import annotations

from types import MappingProxyType

import timm
from timm.models import VisionTransformer

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import token_pooling_build

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


def build_network(*, depth: int | None = None) -> VisionTransformer:
    """GigaPath's tile encoder with random weights; ``depth`` overrides the block count (tests)."""
    kwargs = dict(TIMM_KWARGS) if depth is None else {**TIMM_KWARGS, "depth": depth}
    return timm.create_model(ARCH, pretrained=False, **kwargs)


def build_gigapath_tile(spec: ExtractorSpec) -> ModelBuild:
    """GigaPath tile encoder: 1536 features, the class token after the final norm."""
    network = build_network()
    return token_pooling_build(
        network,
        pooling="cls",
        num_prefix_tokens=network.num_prefix_tokens,
        fixed_input_size=spec.input_size,  # no dynamic_img_size in the published config
    )
