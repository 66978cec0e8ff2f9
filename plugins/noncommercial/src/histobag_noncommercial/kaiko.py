"""kaiko.ai's pathology ViTs, built as their ``torch.hub`` entry points build them.

Each entry point of ``kaiko-ai/towards_large_pathology_fms`` (``hubconf.py``) calls
``timm.create_model(arch, dynamic_img_size=True, pretrained_cfg={"url": ..., "num_classes": 0})``
and timm loads the release file through the ViT's ``checkpoint_filter_fn``. Here the same
network is built with random weights, and the same filter converts the checkpoint before
histobag loads it strictly: the Hub's timm safetensors pass through unchanged, a release file
is converted as ``torch.hub.load`` converts it. The embedding is the class token after the
final norm (timm's ``global_pool="token"``, what the entry points return).

ViT-L/14 is ``vit_large_patch14_reg4_dinov2`` at its default 518 px: its position embeddings
cover 37 x 37 patches and are interpolated to the tile's grid (16 x 16 at 224 px), as in the
entry point.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import timm_vit_build

#: The timm architecture of each entry point (``vits8``, ``vits16``, ...).
ARCHS = MappingProxyType(
    {
        "kaiko-vits8": "vit_small_patch8_224",
        "kaiko-vits16": "vit_small_patch16_224",
        "kaiko-vitb8": "vit_base_patch8_224",
        "kaiko-vitb16": "vit_base_patch16_224",
        "kaiko-vitl14": "vit_large_patch14_reg4_dinov2",
    }
)

#: The entry points' create_model arguments (``num_classes`` comes from their pretrained_cfg).
TIMM_KWARGS = MappingProxyType({"dynamic_img_size": True, "num_classes": 0})


def _build(name: str) -> ModelBuild:
    """The entry point's network, pooled to its class token, with its checkpoint filter."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    build = timm_vit_build(ARCHS[name], TIMM_KWARGS, pooling="cls")
    network = build.weights_target

    def adapt(state_dict: dict[str, Any]) -> dict[str, Any]:
        return checkpoint_filter_fn(state_dict, network)

    return replace(build, adapt_state_dict=adapt)


def build_kaiko_vits8(spec: ExtractorSpec) -> ModelBuild:
    """kaiko.ai ViT-S/8: 384 features."""
    return _build("kaiko-vits8")


def build_kaiko_vits16(spec: ExtractorSpec) -> ModelBuild:
    """kaiko.ai ViT-S/16: 384 features."""
    return _build("kaiko-vits16")


def build_kaiko_vitb8(spec: ExtractorSpec) -> ModelBuild:
    """kaiko.ai ViT-B/8: 768 features."""
    return _build("kaiko-vitb8")


def build_kaiko_vitb16(spec: ExtractorSpec) -> ModelBuild:
    """kaiko.ai ViT-B/16: 768 features."""
    return _build("kaiko-vitb16")


def build_kaiko_vitl14(spec: ExtractorSpec) -> ModelBuild:
    """kaiko.ai ViT-L/14 with 4 registers: 1024 features."""
    return _build("kaiko-vitl14")
