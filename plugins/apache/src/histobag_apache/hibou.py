"""Hibou-B and Hibou-L (HistAI): DINOv2 ViT/14 with 4 registers, run as timm ViTs.

HistAI publish each model as a ``model.safetensors`` of transformers' layout for their own
``Dinov2ModelWithRegisters`` (custom code, ``trust_remote_code=True``): the hub names
``embeddings.*``, ``encoder.layer.<i>.*`` and ``layernorm.*``, separate query/key/value
projections, a SwiGLU feed-forward (``mlp.weights_in`` / ``mlp.weights_out``) and LayerScale
(``layer_scale1.lambda1``). transformers is not needed at run time: the checkpoint is renamed
to timm's names on load (:func:`convert`).

Token order is the class token, the 4 registers, then the patch tokens; the position
embedding covers the class token and the patches, never the registers. timm adds it to the
patches only (``no_embed_class``), so the class token's position is added to the class token
on load: the same sum, computed once. The embedding is the class token after the final
LayerNorm (the hub model's ``pooler_output``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import SwiGLUPacked
from timm.models import VisionTransformer
from torch import nn

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild


@dataclass(frozen=True)
class HibouArch:
    """The architecture fields of a Hibou ``config.json``.

    Attributes:
        embed_dim: ``hidden_size``.
        depth: ``num_hidden_layers``.
        num_heads: ``num_attention_heads``.
        patch_size: ``patch_size``.
        img_size: ``image_size``: the position embeddings' grid, added unchanged at this size.
        registers: ``num_register_tokens``.
        mlp_ratio: ``mlp_ratio`` before the SwiGLU width rule (:func:`swiglu_hidden`).
        eps: ``layer_norm_eps``.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 14
    img_size: int = 224
    registers: int = 4
    mlp_ratio: float = 4.0
    eps: float = 1e-6


#: histai/hibou-b config.json: ViT-B/14, 4 registers, SwiGLU, LayerScale, eps 1e-6.
HIBOU_B = HibouArch(embed_dim=768, depth=12, num_heads=12)
#: histai/hibou-L: ViT-L/14 of the same recipe.
HIBOU_L = HibouArch(embed_dim=1024, depth=24, num_heads=16)


def swiglu_hidden(embed_dim: int, mlp_ratio: float = 4.0) -> int:
    """Width of DINOv2's SwiGLU feed-forward: two thirds of ``embed_dim * mlp_ratio``, rounded
    up to a multiple of 8 (768 → 2048, 1024 → 2736)."""
    return (int(int(embed_dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def build_network(arch: HibouArch) -> VisionTransformer:
    """A timm ViT computing what the hub model computes for ``arch`` at its image size,
    returning the normalised class token (B, embed_dim); random weights."""
    hidden = swiglu_hidden(arch.embed_dim, arch.mlp_ratio)
    return VisionTransformer(
        img_size=arch.img_size,
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        # timm's packed SwiGLU takes fc1's width (both halves): 2 * hidden / embed_dim.
        mlp_ratio=2 * hidden / arch.embed_dim,
        mlp_layer=SwiGLUPacked,
        act_layer=nn.SiLU,
        qkv_bias=True,
        init_values=1.0,  # config.json's layerscale_value; the checkpoint sets the gammas
        reg_tokens=arch.registers,
        no_embed_class=True,
        num_classes=0,
        global_pool="token",
        norm_layer=partial(nn.LayerNorm, eps=arch.eps),
    )


_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_QKV = ("query", "key", "value")

#: Whole-key renames outside the layers.
_RENAMES = {
    "embeddings.register_tokens": "reg_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}

#: Per-layer prefix renames.
_LAYER_RENAMES = (
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("attention.output.dense.", "attn.proj."),
    ("mlp.weights_in.", "mlp.fc1."),
    ("mlp.weights_out.", "mlp.fc2."),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "ls2.gamma"),
)

#: Tensors the embedding never uses: the masked-modelling token of DINOv2's training.
_DROP = frozenset({"embeddings.mask_token"})

_CLS, _POS = "embeddings.cls_token", "embeddings.position_embeddings"


def convert(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Rename a Hibou hub checkpoint to the timm names of :func:`build_network`.

    Layer ``i``'s query, key and value are concatenated into ``blocks.i.attn.qkv``; the class
    token's position embedding is added to the class token and the patches' become
    ``pos_embed``. Keys it does not recognise, and an incomplete group (query without key, a
    class token without position embeddings), keep their names from the checkpoint, so the
    strict loader reports them as the file names them.
    """
    out: dict[str, Any] = {}
    qkv: dict[tuple[str, str], dict[str, tuple[str, Any]]] = {}
    for key, value in state_dict.items():
        if key in _DROP or key in (_CLS, _POS):
            continue
        if key in _RENAMES:
            out[_RENAMES[key]] = value
            continue
        match = _LAYER.match(key)
        if match is None:
            out[key] = value
            continue
        block, rest = f"blocks.{match[1]}.", match[2]
        part = next((p for p in _QKV if rest.startswith(f"attention.attention.{p}.")), None)
        if part is not None:
            param = rest.rsplit(".", 1)[1]
            qkv.setdefault((block, param), {})[part] = (key, value)
            continue
        renamed = next(
            (new + rest[len(old) :] for old, new in _LAYER_RENAMES if rest.startswith(old)), None
        )
        out[block + renamed if renamed is not None else key] = value
    for (block, param), parts in qkv.items():
        if set(parts) == set(_QKV):
            out[f"{block}attn.qkv.{param}"] = torch.cat([parts[p][1] for p in _QKV], dim=0)
        else:
            out.update(dict(parts.values()))
    if _CLS in state_dict and _POS in state_dict:
        position = state_dict[_POS]
        out["cls_token"] = state_dict[_CLS] + position[:, :1]
        out["pos_embed"] = position[:, 1:]
    else:
        out.update({key: state_dict[key] for key in (_CLS, _POS) if key in state_dict})
    return out


def build_hibou(arch: HibouArch) -> ModelBuild:
    """The extractor for a Hibou checkpoint of architecture ``arch``; the published weights
    load after :func:`convert`."""
    network = build_network(arch).eval()
    return ModelBuild(
        module=network,
        adapt_state_dict=convert,
        num_features=arch.embed_dim,
        fixed_input_size=arch.img_size,
    )


def build_hibou_b(spec: ExtractorSpec) -> ModelBuild:
    """Hibou-B: 768 features, the hub model's ``pooler_output``."""
    return build_hibou(HIBOU_B)


def build_hibou_l(spec: ExtractorSpec) -> ModelBuild:
    """Hibou-L: 1024 features, the hub model's ``pooler_output``."""
    return build_hibou(HIBOU_L)
