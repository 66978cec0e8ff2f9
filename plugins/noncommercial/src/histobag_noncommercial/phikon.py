"""Phikon and Phikon-v2 (Owkin): transformers ViT / DINOv2 checkpoints run as timm ViTs.

Both embed a tile as the class token of the final, layer-normalised tokens
(``last_hidden_state[:, 0]`` in transformers). transformers is not needed at run time: the
published checkpoints are converted to timm names on load (:mod:`.hf_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from timm.models import VisionTransformer
from torch import nn

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag_noncommercial import hf_layout


@dataclass(frozen=True)
class ViTArch:
    """Hyper-parameters of a transformers ViT/DINOv2 config, as timm needs them.

    Attributes:
        embed_dim: ``hidden_size``.
        depth: ``num_hidden_layers``.
        num_heads: ``num_attention_heads``.
        patch_size: ``patch_size``.
        img_size: ``image_size``; the only input side the network takes (transformers adds the
            position embeddings unchanged at this size).
        mlp_ratio: ``intermediate_size / hidden_size`` (ViT) or ``mlp_ratio`` (DINOv2).
        eps: ``layer_norm_eps``.
        layer_scale: ``layerscale_value`` for DINOv2's LayerScale, ``None`` for plain ViT.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    img_size: int = 224
    mlp_ratio: float = 4.0
    eps: float = 1e-6
    layer_scale: float | None = None


#: owkin/phikon config.json: ViT-B/16, layer_norm_eps 1e-6, qkv_bias, exact GELU.
PHIKON = ViTArch(embed_dim=768, depth=12, num_heads=12)
#: owkin/phikon-v2 config.json: DINOv2 ViT-L/16 at 224 px, LayerScale, layer_norm_eps 1e-6.
PHIKON_V2 = ViTArch(embed_dim=1024, depth=24, num_heads=16, layer_scale=1e-5)


def build_network(arch: ViTArch) -> VisionTransformer:
    """A timm ViT computing what transformers' model computes for ``arch``, returning the
    normalised class token (B, embed_dim); random weights."""
    return VisionTransformer(
        img_size=arch.img_size,
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        qkv_bias=True,
        init_values=arch.layer_scale,
        num_classes=0,
        global_pool="token",
        norm_layer=partial(nn.LayerNorm, eps=arch.eps),
        act_layer=nn.GELU,
    )


def build_hf_vit(arch: ViTArch, layout: hf_layout.Layout) -> ModelBuild:
    """The extractor for a transformers checkpoint in ``layout`` with hyper-parameters
    ``arch``; its weights load after conversion to timm names."""
    network = build_network(arch).eval()
    return ModelBuild(
        module=network,
        adapt_state_dict=hf_layout.converter(layout),
        num_features=arch.embed_dim,
        fixed_input_size=arch.img_size,
    )


def build_phikon(spec: ExtractorSpec) -> ModelBuild:
    """Phikon: 768 features, the class token of transformers ``ViTModel``'s output."""
    return build_hf_vit(PHIKON, hf_layout.VIT)


def build_phikon_v2(spec: ExtractorSpec) -> ModelBuild:
    """Phikon-v2: 1024 features, the class token of transformers ``Dinov2Model``'s output."""
    return build_hf_vit(PHIKON_V2, hf_layout.DINOV2)
