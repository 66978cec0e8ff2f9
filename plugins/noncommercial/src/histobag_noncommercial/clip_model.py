"""A CLIP image-text model built from timm parts, matching transformers ``CLIPModel``.

The image tower is a timm ViT with a pre-norm (``pre_layrnorm``), QuickGELU and no patch
bias; its normalised class token goes through ``visual_projection``. The text tower is a causal
transformer whose normalised state at the first end-of-text token goes through
``text_projection``. Checkpoints in transformers' layout load after :func:`adapt_clip`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import QuickGELU
from timm.models import VisionTransformer
from timm.models.vision_transformer import Block
from torch import nn

from histobag_noncommercial import hf_layout


@dataclass(frozen=True)
class CLIPArch:
    """Hyper-parameters of a transformers ``CLIPConfig`` (QuickGELU, LayerNorm eps 1e-5)."""

    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    patch_size: int = 32
    image_size: int = 224
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    vocab_size: int = 49408
    context_length: int = 77
    embed_dim: int = 512
    mlp_ratio: float = 4.0
    eps: float = 1e-5


def _norm(arch: CLIPArch) -> Any:
    return partial(nn.LayerNorm, eps=arch.eps)


class CLIPTextTower(nn.Module):
    """CLIP's text transformer: token + position embeddings, causal pre-norm blocks, final norm.

    Args:
        arch: Sizes of the tower.
    """

    def __init__(self, arch: CLIPArch) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.text_width)
        self.position_embedding = nn.Embedding(arch.context_length, arch.text_width)
        self.blocks = nn.ModuleList(
            Block(
                arch.text_width,
                arch.text_heads,
                mlp_ratio=arch.mlp_ratio,
                qkv_bias=True,
                act_layer=QuickGELU,
                norm_layer=_norm(arch),
            )
            for _ in range(arch.text_layers)
        )
        self.norm = _norm(arch)(arch.text_width)

    @property
    def context_length(self) -> int:
        """The longest token sequence the tower accepts."""
        return self.position_embedding.num_embeddings

    def forward(self, input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
        """Normalised hidden state (B, width) at each sequence's first ``eos_token_id``."""
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x, is_causal=True)
        x = self.norm(x)
        eos = (input_ids == eos_token_id).int().argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eos]


class CLIPImageText(nn.Module):
    """Both CLIP towers and their projections; ``forward`` embeds images.

    Args:
        arch: Sizes of the model.
    """

    def __init__(self, arch: CLIPArch) -> None:
        super().__init__()
        self.vision = VisionTransformer(
            img_size=arch.image_size,
            patch_size=arch.patch_size,
            embed_dim=arch.vision_width,
            depth=arch.vision_layers,
            num_heads=arch.vision_heads,
            mlp_ratio=arch.mlp_ratio,
            qkv_bias=True,
            pre_norm=True,
            num_classes=0,
            global_pool="token",
            norm_layer=_norm(arch),
            act_layer=QuickGELU,
        )
        self.visual_projection = nn.Linear(arch.vision_width, arch.embed_dim, bias=False)
        self.text = CLIPTextTower(arch)
        self.text_projection = nn.Linear(arch.text_width, arch.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings (B, embed_dim) of a normalised batch (B, 3, H, W), as
        transformers' ``CLIPModel.get_image_features``."""
        return self.visual_projection(self.vision(images))

    def encode_text(self, input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
        """Projected text embeddings (B, embed_dim) of token ids (B, L), as transformers'
        ``CLIPModel.get_text_features``."""
        return self.text_projection(self.text(input_ids, eos_token_id))


def adapt_clip(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Convert a transformers ``CLIPModel`` checkpoint to :class:`CLIPImageText`'s names.

    The projections and ``logit_scale`` keep their names; ``vision_model.*`` and
    ``text_model.*`` go to the towers.
    """
    towers = {"vision_model.": "vision", "text_model.": "text"}
    parts: dict[str, dict[str, Any]] = {name: {} for name in ("vision", "text", "")}
    for key, value in state_dict.items():
        name = next((n for prefix, n in towers.items() if key.startswith(prefix)), "")
        parts[name][key] = value
    return {
        **hf_layout.convert(parts["vision"], hf_layout.CLIP_VISION, "vision."),
        **hf_layout.convert(parts["text"], hf_layout.CLIP_TEXT, "text."),
        **parts[""],
    }
