"""Midnight-12k (kaiko.ai): transformers' ``Dinov2Model`` ViT-g/14, run as a timm ViT.

The weights are a ``model.safetensors`` of transformers' layout, loaded by the model card with
``AutoModel.from_pretrained("kaiko-ai/midnight")``; the card names ``facebook/dinov2-giant``
as the base model, whose architecture it keeps: 40 blocks of width 1536 and 24 heads, SwiGLU
feed-forward (``mlp.weights_in`` 1536 → 2 x 4096, ``mlp.weights_out`` 4096 → 1536), LayerScale,
no registers, and position embeddings for 518 px (37 x 37 patches). The checkpoint is renamed
to timm's names on load (:func:`convert`); transformers is not needed at run time.

transformers interpolates the 37 x 37 position embeddings to the tile's grid with a plain
bicubic resize (no antialiasing); :class:`MidnightViT` does the same, where timm's dynamic
size would antialias. The embedding is the card's classification embedding: the class token
of ``last_hidden_state`` concatenated with the mean of its patch tokens (3072 features).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from types import MappingProxyType
from typing import Any

import torch
from timm.layers import SwiGLUPacked
from timm.models import VisionTransformer
from torch import nn
from torch.nn import functional as F

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import token_pooling_build

#: The ViT-g/14 of facebook/dinov2-giant's config.json, as timm arguments. ``mlp_ratio``
#: gives the packed SwiGLU input projection its 2 x 4096 outputs (int(1536 x 5.33334)).
VIT_KWARGS = MappingProxyType(
    {
        "img_size": 518,
        "patch_size": 14,
        "embed_dim": 1536,
        "depth": 40,
        "num_heads": 24,
        "mlp_ratio": 5.33334,
        "init_values": 1.0,
    }
)


class MidnightViT(VisionTransformer):
    """A timm ViT whose position embeddings follow tiles of any size as transformers'
    ``Dinov2Embeddings.interpolate_pos_encoding`` does: kept as they are on the 37 x 37
    grid, else resized bicubically (float32, ``align_corners=False``, no antialiasing)."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape  # patch_embed keeps NHWC for dynamic sizes
        pos = self.pos_embed
        grid = self.patch_embed.grid_size
        if (height, width) != tuple(grid):
            patches = pos[:, 1:].reshape(1, grid[0], grid[1], dim).permute(0, 3, 1, 2)
            patches = F.interpolate(
                patches.float(), size=(height, width), mode="bicubic", align_corners=False
            ).to(pos.dtype)
            pos = torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, -1, dim)], 1)
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, -1, dim)], 1)
        return self.pos_drop(tokens + pos)


def build_network(**overrides: Any) -> MidnightViT:
    """Midnight's network with random weights (``overrides``: fewer blocks, for tests)."""
    return MidnightViT(
        **{**VIT_KWARGS, **overrides},
        dynamic_img_size=True,
        qkv_bias=True,
        num_classes=0,
        global_pool="token",
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        mlp_layer=SwiGLUPacked,
        act_layer=nn.SiLU,
    ).eval()


_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_LAYER_RENAMES = (
    ("attention.output.dense.", "attn.proj."),
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("layer_scale2.lambda1", "ls2.gamma"),
    ("mlp.weights_in.", "mlp.fc1."),
    ("mlp.weights_out.", "mlp.fc2."),
)
_QKV = ("attention.attention.query.", "attention.attention.key.", "attention.attention.value.")
#: Used only for masked-image modelling in training.
_DROPPED = frozenset({"embeddings.mask_token"})


def convert(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``Dinov2Model`` names → timm names; a layer's query, key and value are stacked into
    ``attn.qkv``. Unknown keys, and an incomplete query/key/value group, keep their names, so
    the strict loader reports them as the checkpoint names them."""
    out: dict[str, Any] = {}
    groups: dict[tuple[str, str], dict[int, tuple[str, Any]]] = {}
    for key, value in state_dict.items():
        if key in _DROPPED:
            continue
        if key in _RENAMES:
            out[_RENAMES[key]] = value
            continue
        match = _LAYER.match(key)
        if match is None:
            out[key] = value
            continue
        block, rest = f"blocks.{match[1]}.", match[2]
        part = next((i for i, prefix in enumerate(_QKV) if rest.startswith(prefix)), None)
        if part is not None:
            groups.setdefault((block, rest[len(_QKV[part]) :]), {})[part] = (key, value)
            continue
        new = next((n + rest[len(o) :] for o, n in _LAYER_RENAMES if rest.startswith(o)), None)
        out[block + new if new is not None else key] = value
    for (block, param), parts in groups.items():
        if len(parts) == len(_QKV):
            out[f"{block}attn.qkv.{param}"] = torch.cat([parts[i][1] for i in range(3)], dim=0)
        else:
            out.update(dict(parts.values()))
    return out


def checkpoint_key(key: str) -> str:
    """The ``Dinov2Model`` name of a timm key, so mismatch errors name keys as the file does
    (a fused ``attn.qkv`` names its three projections)."""
    for old, new in _RENAMES.items():
        if key == new:
            return old
    match = re.match(r"^blocks\.(\d+)\.(.+)$", key)
    if match is None:
        return key
    layer, rest = f"encoder.layer.{match[1]}.", match[2]
    if rest.startswith("attn.qkv."):
        param = rest[len("attn.qkv.") :]
        return "/".join(layer + prefix + param for prefix in _QKV)
    for old, new in _LAYER_RENAMES:
        if rest.startswith(new):
            return layer + old + rest[len(new) :]
    return key


def build_midnight_12k(spec: ExtractorSpec) -> ModelBuild:
    """Midnight-12k: 3072 features, the class token ‖ the mean of the patch tokens."""
    build = token_pooling_build(
        build_network(), pooling="cls+mean", num_prefix_tokens=1, input_multiple=14
    )
    build.adapt_state_dict = convert
    build.checkpoint_key = checkpoint_key
    return build
