"""UNI (Mahmood Lab): timm's ViT-L/16 with LayerScale; embedding = CLS."""

from __future__ import annotations

from types import MappingProxyType

import timm
from timm.models import VisionTransformer

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import token_pooling_build

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


def build_network(*, depth: int | None = None) -> VisionTransformer:
    """UNI's backbone with random weights; ``depth`` overrides the block count (tests)."""
    kwargs = dict(TIMM_KWARGS) if depth is None else {**TIMM_KWARGS, "depth": depth}
    return timm.create_model(ARCH, pretrained=False, **kwargs)


def build_uni(spec: ExtractorSpec) -> ModelBuild:
    """UNI: 1024 features, the class token after the final norm."""
    network = build_network()
    # dynamic_img_size: position embeddings are interpolated, so any tile size runs.
    return token_pooling_build(network, pooling="cls", num_prefix_tokens=network.num_prefix_tokens)
