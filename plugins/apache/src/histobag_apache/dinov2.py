"""ViTs from your own DINOv2 training runs, run as timm ``VisionTransformer``.

``build_feature_extractor("dinov2", weights="teacher_checkpoint.pth", cfg="config.yaml")``
builds the teacher backbone described by the run's ``config.yaml`` and loads its weights; the
embedding is the class token after the final norm (DINOv2's ``x_norm_clstoken``).

Read from ``cfg`` (missing keys take the values of DINOv2's ``ssl_default_config.yaml``):

- ``student.arch``: ``vit_small`` (384-d, 12 blocks, 6 heads), ``vit_base`` (768, 12, 12),
  ``vit_large`` (1024, 24, 16), ``vit_giant2`` (1536, 40, 24); default ``vit_large``;
- ``student.patch_size`` (16), ``student.layerscale`` (1e-5; 0 or null: no LayerScale),
  ``student.ffn_layer`` (``mlp``, or ``swiglu``/``swiglufused``: SwiGLU with hidden width
  ``(int(8 * dim / 3) + 7) // 8 * 8``), ``student.block_chunks`` (0),
  ``student.num_register_tokens`` (0), ``student.qkv_bias``/``proj_bias``/``ffn_bias`` (true);
- ``crops.global_crops_size`` (224): the input side; the position embeddings have this size,
  so tiles are resized to it (no interpolation of the position embeddings).

Checkpoint layouts: ``{'teacher': {...}}`` (``teacher_checkpoint.pth``), or the training
checkpoint ``{'model': {'teacher.*': ..., 'student.*': ...}}`` (teacher kept); keys under
``backbone.``, optionally behind ``module.`` prefixes; heads (``dino_head.*``, ``ibot_head.*``)
and ``mask_token`` are dropped; chunked blocks (``blocks.<chunk>.<i>.*``) are un-chunked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from timm.layers import GluMlp, Mlp
from timm.models import VisionTransformer
from torch import nn

from histobag import ExtractorSpec
from histobag.errors import ExtractorArgumentError, WeightsError
from histobag.extractors.base import ModelBuild
from histobag.specs import Preprocessing
from histobag_apache.checkpoint_keys import strip_prefixes

#: (embed_dim, depth, num_heads) of DINOv2's architectures.
ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    "vit_giant2": (1536, 40, 24),
}

#: Values of DINOv2's ssl_default_config.yaml for the keys read here.
DEFAULTS: dict[str, dict[str, Any]] = {
    "student": {
        "arch": "vit_large",
        "patch_size": 16,
        "layerscale": 1.0e-5,
        "ffn_layer": "mlp",
        "block_chunks": 0,
        "qkv_bias": True,
        "proj_bias": True,
        "ffn_bias": True,
        "num_register_tokens": 0,
    },
    "crops": {"global_crops_size": 224},
}

_FFN_LAYERS = ("mlp", "swiglu", "swiglufused")


@dataclass(frozen=True)
class DinoV2Arch:
    """The backbone hyper-parameters read from a DINOv2 config."""

    arch: str
    patch_size: int
    layerscale: float | None
    ffn_layer: str
    block_chunks: int
    num_register_tokens: int
    img_size: int
    qkv_bias: bool
    proj_bias: bool
    ffn_bias: bool

    @property
    def embed_dim(self) -> int:
        """Width of the tokens (and of the embedding)."""
        return ARCHS[self.arch][0]


def read_cfg(cfg: str | os.PathLike[str] | Mapping[str, Any]) -> DinoV2Arch:
    """Backbone hyper-parameters from a DINOv2 ``config.yaml`` (path) or its mapping.

    Raises:
        ExtractorArgumentError: The file is missing or unreadable, or a value is unsupported.
    """
    if isinstance(cfg, (str, os.PathLike)):
        import yaml

        path = Path(cfg).expanduser()
        if not path.is_file():
            raise ExtractorArgumentError(
                f"DINOv2 config not found: {path}. Pass cfg= the config.yaml saved in the "
                "training run's output folder."
            )
        try:
            cfg = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ExtractorArgumentError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(cfg, Mapping):
        raise ExtractorArgumentError(
            f"cfg must be a DINOv2 config.yaml path or mapping, not {type(cfg).__name__}"
        )

    def get(section: str, key: str) -> Any:
        values = cfg.get(section) or {}
        return values[key] if key in values else DEFAULTS[section][key]

    arch = str(get("student", "arch")).removesuffix("_memeff")
    if arch not in ARCHS:
        raise ExtractorArgumentError(
            f"student.arch {arch!r} is not a DINOv2 architecture; expected one of "
            f"{', '.join(ARCHS)}"
        )
    ffn = str(get("student", "ffn_layer"))
    if ffn not in _FFN_LAYERS:
        raise ExtractorArgumentError(
            f"student.ffn_layer {ffn!r} is not supported; expected one of {', '.join(_FFN_LAYERS)}"
        )
    layerscale = get("student", "layerscale")
    return DinoV2Arch(
        arch=arch,
        patch_size=int(get("student", "patch_size")),
        layerscale=float(layerscale) if layerscale else None,
        ffn_layer=ffn,
        block_chunks=int(get("student", "block_chunks")),
        num_register_tokens=int(get("student", "num_register_tokens")),
        img_size=int(get("crops", "global_crops_size")),
        qkv_bias=bool(get("student", "qkv_bias")),
        proj_bias=bool(get("student", "proj_bias")),
        ffn_bias=bool(get("student", "ffn_bias")),
    )


def swiglu_hidden(dim: int, mlp_ratio: float = 4.0) -> int:
    """Hidden width of DINOv2's fused SwiGLU for ``dim``: 2/3 of the MLP's, rounded up to 8."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def _ffn(arch: DinoV2Arch, in_features: int, **_: Any) -> nn.Module:
    """DINOv2's feed-forward layer with its own bias flag (timm ties it to ``proj_bias``)."""
    if arch.ffn_layer == "mlp":
        return Mlp(in_features, 4 * in_features, act_layer=nn.GELU, bias=arch.ffn_bias)
    hidden = swiglu_hidden(in_features)
    return GluMlp(in_features, 2 * hidden, act_layer=nn.SiLU, gate_last=False, bias=arch.ffn_bias)


def build_network(arch: DinoV2Arch) -> VisionTransformer:
    """A timm ViT computing DINOv2's teacher backbone for ``arch`` (random weights).

    Position embeddings cover only the patches (``no_embed_class``): DINOv2 adds the class
    token's position before inserting the registers, so it is folded into the class token.
    """
    dim, depth, heads = ARCHS[arch.arch]
    return VisionTransformer(
        img_size=arch.img_size,
        patch_size=arch.patch_size,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        qkv_bias=arch.qkv_bias,
        proj_bias=arch.proj_bias,
        init_values=arch.layerscale,
        reg_tokens=arch.num_register_tokens,
        no_embed_class=True,
        num_classes=0,
        global_pool="token",
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        act_layer=nn.GELU,
        mlp_layer=partial(_ffn, arch),
    ).eval()


_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")
_RENAMES = (("mlp.w12.", "mlp.fc1."), ("mlp.w3.", "mlp.fc2."))


def adapt_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """DINOv2 teacher weights → timm names (see the module docstring for the layouts).

    Raises:
        WeightsError: No backbone weights were found.
    """
    keys = {strip_prefixes(k, ("module.",)): v for k, v in state_dict.items()}
    if any(k.startswith("teacher.") for k in keys):  # a full training checkpoint
        keys = {k[len("teacher.") :]: v for k, v in keys.items() if k.startswith("teacher.")}
    keys = {strip_prefixes(k, ("module.",)): v for k, v in keys.items()}
    if any(k.startswith("backbone.") for k in keys):
        keys = {k[len("backbone.") :]: v for k, v in keys.items() if k.startswith("backbone.")}
    keys = {strip_prefixes(k, ("module.",)): v for k, v in keys.items()}
    if "cls_token" not in keys or "pos_embed" not in keys:
        raise WeightsError(
            "No DINOv2 backbone in this checkpoint (no cls_token/pos_embed). Expected the "
            "teacher_checkpoint.pth of a DINOv2 run ({'teacher': {'backbone.*': ...}}), or its "
            "training checkpoint ({'model': {'teacher.backbone.*': ...}}). Found keys like: "
            + ", ".join(sorted(state_dict)[:5])
        )
    out: dict[str, Any] = {}
    for key, value in keys.items():
        if key == "mask_token":
            continue  # used only by iBOT masking during training
        key = _CHUNKED.sub(r"blocks.\1.", key)
        for old, new in _RENAMES:
            key = key.replace(old, new)
        out["reg_token" if key == "register_tokens" else key] = value
    pos = out["pos_embed"]
    out["cls_token"] = out["cls_token"] + pos[:, :1]
    out["pos_embed"] = pos[:, 1:]
    return out


def _checkpoint_key(key: str) -> str:
    """Checkpoint name of a timm key, for mismatch errors."""
    for old, new in _RENAMES:
        key = key.replace(new, old)
    return "backbone." + ("register_tokens" if key == "reg_token" else key)


def build_dinov2(
    spec: ExtractorSpec, *, cfg: str | os.PathLike[str] | Mapping[str, Any] | None = None
) -> ModelBuild:
    """Factory of ``dinov2``: the backbone of ``cfg``; the core loads ``weights=`` into it."""
    if cfg is None:
        raise ExtractorArgumentError(
            "dinov2 needs cfg='path/to/config.yaml', the configuration of the DINOv2 training "
            "run (its output folder holds it next to eval/*/teacher_checkpoint.pth): "
            "build_feature_extractor('dinov2', weights='teacher_checkpoint.pth', "
            "cfg='config.yaml')"
        )
    arch = read_cfg(cfg)
    network = build_network(arch)
    return ModelBuild(
        module=network,
        adapt_state_dict=adapt_state_dict,
        num_features=arch.embed_dim,
        preprocessing=Preprocessing(resize=arch.img_size, interpolation="bicubic", antialias=True),
        fixed_input_size=arch.img_size,
        checkpoint_key=_checkpoint_key,
        extra={"arch": arch},
    )
