"""Key conversion from Hugging Face transformers checkpoints to the modules of this pack.

Phikon, Phikon-v2 and PLIP publish their weights in the layout ``save_pretrained`` writes (the
hub layout: ``encoder.layer.0.attention.attention.query.weight`` and so on). This pack runs them
as timm ViTs, so each checkpoint is converted on load: names are mapped, the separate
query/key/value projections are concatenated into timm's fused ``qkv``, and a few tensors the
embedding never uses are dropped (a pooler head, a masked-modelling token, legacy
``position_ids`` buffers).

Keys the conversion does not recognise are passed through unchanged, and an incomplete
query/key/value group keeps its original names, so the core's strict loader reports them by
the names they have in the checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

#: Order in which query, key and value are stacked in timm's fused ``qkv`` projection.
QKV_ORDER = ("q", "k", "v")

_LAYER_KEY = re.compile(r"^(?P<stack>.+?)\.(?P<index>\d+)\.(?P<rest>.+)$")


@dataclass(frozen=True)
class Layout:
    """How one transformers model's checkpoint names map onto a timm-style module.

    Attributes:
        layer_stack: Prefix of the per-layer keys, e.g. ``"encoder.layer"``; layer ``i``
            becomes ``blocks.i``.
        qkv: Per-layer key prefixes of the query, key and value projections.
        layer_renames: Per-layer ``(old prefix, new prefix)`` pairs, tried in order.
        renames: Whole-key renames outside the layers.
        leading_dims: Singleton dimensions prepended to renamed tensors whose layout differs,
            e.g. 2 for CLIP's ``class_embedding`` (C,) → timm's ``cls_token`` (1, 1, C).
        drop: Keys that the embedding never uses and that are ignored when present.
        prefixes: Key prefixes stripped first when present: a tower's name in a multi-tower
            checkpoint (``"vision_model."``), or the base model's name in a checkpoint saved
            from a task model (``"vit."``).
    """

    layer_stack: str
    qkv: tuple[str, str, str]
    layer_renames: tuple[tuple[str, str], ...]
    renames: Mapping[str, str]
    leading_dims: Mapping[str, int] = field(default_factory=dict)
    drop: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()


_ATTENTION_OUT = ("attention.output.dense.", "attn.proj.")

#: transformers ``ViTModel`` (Phikon).
VIT = Layout(
    layer_stack="encoder.layer",
    qkv=(
        "attention.attention.query.",
        "attention.attention.key.",
        "attention.attention.value.",
    ),
    layer_renames=(
        _ATTENTION_OUT,
        ("layernorm_before.", "norm1."),
        ("layernorm_after.", "norm2."),
        ("intermediate.dense.", "mlp.fc1."),
        ("output.dense.", "mlp.fc2."),
    ),
    renames={
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    },
    drop=frozenset({"pooler.dense.weight", "pooler.dense.bias"}),
    prefixes=("vit.",),
)

#: transformers ``Dinov2Model`` (Phikon-v2).
DINOV2 = Layout(
    layer_stack="encoder.layer",
    qkv=VIT.qkv,
    layer_renames=(
        _ATTENTION_OUT,
        ("norm1.", "norm1."),
        ("norm2.", "norm2."),
        ("mlp.fc1.", "mlp.fc1."),
        ("mlp.fc2.", "mlp.fc2."),
        ("layer_scale1.lambda1", "ls1.gamma"),
        ("layer_scale2.lambda1", "ls2.gamma"),
    ),
    renames=VIT.renames,
    drop=frozenset({"embeddings.mask_token"}),
    prefixes=("dinov2.",),
)

_CLIP_LAYER_RENAMES = (
    ("self_attn.out_proj.", "attn.proj."),
    ("layer_norm1.", "norm1."),
    ("layer_norm2.", "norm2."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
)
_CLIP_QKV = ("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")

#: The ``vision_model`` of transformers ``CLIPModel`` (PLIP's image tower).
CLIP_VISION = Layout(
    layer_stack="encoder.layers",
    qkv=_CLIP_QKV,
    layer_renames=_CLIP_LAYER_RENAMES,
    renames={
        "embeddings.class_embedding": "cls_token",
        "embeddings.position_embedding.weight": "pos_embed",
        "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
        "pre_layrnorm.weight": "norm_pre.weight",
        "pre_layrnorm.bias": "norm_pre.bias",
        "post_layernorm.weight": "norm.weight",
        "post_layernorm.bias": "norm.bias",
    },
    leading_dims={"cls_token": 2, "pos_embed": 1},
    drop=frozenset({"embeddings.position_ids"}),
    prefixes=("vision_model.",),
)

#: The ``text_model`` of transformers ``CLIPModel`` (PLIP's text tower).
CLIP_TEXT = Layout(
    layer_stack="encoder.layers",
    qkv=_CLIP_QKV,
    layer_renames=_CLIP_LAYER_RENAMES,
    renames={
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "position_embedding.weight",
        "final_layer_norm.weight": "norm.weight",
        "final_layer_norm.bias": "norm.bias",
    },
    drop=frozenset({"embeddings.position_ids"}),
    prefixes=("text_model.",),
)


def _prepend_dims(value: Any, count: int) -> Any:
    """``value`` with ``count`` leading singleton dimensions; non-tensors unchanged."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.reshape((1,) * count + tuple(value.shape))


def _strip_prefix(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _rename_in_layer(rest: str, layout: Layout) -> str | None:
    for old, new in layout.layer_renames:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return None


def _qkv_part(rest: str, layout: Layout) -> tuple[str, str] | None:
    """(``"q"``/``"k"``/``"v"``, ``"weight"``/``"bias"``) for a per-layer query/key/value key."""
    for part, prefix in zip(QKV_ORDER, layout.qkv):
        if rest.startswith(prefix):
            return part, rest[len(prefix) :]
    return None


def convert(
    state_dict: Mapping[str, Any], layout: Layout, target_prefix: str = ""
) -> dict[str, Any]:
    """Convert a hub-layout state dict to timm names following ``layout``.

    Converted keys get ``target_prefix`` (the tower's name in a multi-tower module). Layer
    ``i``'s query/key/value tensors are concatenated into ``blocks.i.attn.qkv``. Unknown keys,
    and a query/key/value group missing a member, keep their names from the checkpoint so the
    strict loader reports them as they are.
    """
    out: dict[str, Any] = {}
    groups: dict[tuple[str, str], dict[str, tuple[str, Any]]] = {}
    for original, value in state_dict.items():
        key = _strip_prefix(original, layout.prefixes)
        if key in layout.drop:
            continue
        if key in layout.renames:
            new = layout.renames[key]
            out[target_prefix + new] = _prepend_dims(value, layout.leading_dims.get(new, 0))
            continue
        match = _LAYER_KEY.match(key)
        if match is None or match["stack"] != layout.layer_stack:
            out[original] = value
            continue
        block, rest = f"blocks.{match['index']}.", match["rest"]
        qkv = _qkv_part(rest, layout)
        if qkv is not None:
            part, param = qkv
            groups.setdefault((block, param), {})[part] = (original, value)
            continue
        renamed = _rename_in_layer(rest, layout)
        out[target_prefix + block + renamed if renamed is not None else original] = value
    for (block, param), parts in groups.items():
        if set(parts) == set(QKV_ORDER):
            out[f"{target_prefix}{block}attn.qkv.{param}"] = torch.cat(
                [parts[p][1] for p in QKV_ORDER], dim=0
            )
        else:
            out.update(dict(parts.values()))
    return out


def converter(layout: Layout) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``adapt_state_dict`` for a single-tower checkpoint in ``layout``."""

    def adapt(state_dict: dict[str, Any]) -> dict[str, Any]:
        return convert(state_dict, layout)

    return adapt
