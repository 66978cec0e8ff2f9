"""MADELEINE (Jaume et al., ECCV 2024): a multi-head gated ABMIL over CONCH v1 tile features.

The slide embedding is what the official ``MADELEINE.encode_he`` returns (TRIDENT's
``madeleine`` slide encoder calls it):

1. ``wsi_embedders.pre_attn``: three ``Linear → LayerNorm → GELU`` blocks, 512 → 512 → 512 →
   512 x 4 (dropout between them does nothing at inference);
2. the 2048 channels are split among the 4 heads *interleaved*: channel ``e * 4 + c`` is
   dimension ``e`` of head ``c`` (the official ``rearrange('b t (e c) -> b t e c')``);
3. each head ``wsi_embedders.attn.<c>`` is a gated ABMIL (:mod:`.abmil`, hidden width 512,
   softmax over the tiles) that pools its own 512-d slice;
4. the pooled (512, 4) matrix is flattened in the same interleaved order and projected by
   ``projector`` (2048 → 512).

``token_projector`` (2048 → 128) serves the training objective only; it is in the checkpoint and
loaded, but does not enter the slide embedding. Tile coordinates are not used.

The published checkpoint (``model.pt`` of ``MahmoodLab/madeleine``) is the state dict of the
model as trained under ``nn.DataParallel``: every key starts with ``module.``; the official
loader removes it, and so does this one (files without it load too). Sizes follow the official
training scripts (``--n_heads 4 --patch_embedding_dim 512 --wsi_encoder_hidden_dim 512``; the
attention's hidden width is fixed at 512 in the code), without stain encodings, as
``create_model`` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag_noncommercial.abmil import (
    ABMILSlideEncoder,
    GatedAttention,
    abmil_build,
    attention_pool,
)

#: Prefix of every key of the published checkpoint (saved from ``nn.DataParallel``).
CHECKPOINT_PREFIX = "module."


@dataclass(frozen=True)
class MadeleineConfig:
    """MADELEINE's sizes (defaults: the published model).

    Attributes:
        in_dim: Width of the tile features (CONCH v1: 512).
        dim: Width of each head's slice and of the slide embedding (the official
            ``wsi_encoder_hidden_dim``, which its projector requires to equal the attention's
            hidden width, 512).
        n_heads: Attention heads.
        token_dim: Output width of ``token_projector`` (training only).
    """

    in_dim: int = 512
    dim: int = 512
    n_heads: int = 4
    token_dim: int = 128


#: The published model.
FULL = MadeleineConfig()


def _block(in_dim: int, out_dim: int) -> list[nn.Module]:
    """``Linear → LayerNorm → GELU`` and a placeholder where the official dropout sits, so
    the parameters keep the official indices (0, 1, 4, 5, 8, 9)."""
    return [nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.GELU(), nn.Identity()]


class Madeleine(ABMILSlideEncoder):
    """MADELEINE's slide encoder under the official parameter names (without ``module.``)."""

    def __init__(self, config: MadeleineConfig = FULL) -> None:
        super().__init__()
        self.config = config
        width = config.dim * config.n_heads
        self.wsi_embedders = nn.Module()
        self.wsi_embedders.pre_attn = nn.Sequential(
            *_block(config.in_dim, config.dim),
            *_block(config.dim, config.dim),
            *_block(config.dim, width),
        )
        self.wsi_embedders.attn = nn.ModuleList(
            GatedAttention(config.dim, config.dim) for _ in range(config.n_heads)
        )
        self.token_projector = nn.Linear(width, config.token_dim)
        self.projector = nn.Linear(width, config.dim)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """``encode_he``: slide embeddings (B, dim) of tile features (B, N, in_dim)."""
        tokens = self.wsi_embedders.pre_attn(features)
        # channel e * n_heads + c is dimension e of head c
        tokens = tokens.unflatten(-1, (self.config.dim, self.config.n_heads))
        pooled = [
            attention_pool(head(tokens[..., c]), tokens[..., c])
            for c, head in enumerate(self.wsi_embedders.attn)
        ]
        return self.projector(torch.stack(pooled, dim=-1).flatten(1))


def madeleine_build(config: MadeleineConfig) -> ModelBuild:
    """ModelBuild of MADELEINE of sizes ``config`` (random weights)."""
    return abmil_build(
        Madeleine(config),
        in_features=config.in_dim,
        num_features=config.dim,
        prefix=CHECKPOINT_PREFIX,
    )


def build_madeleine(spec: ExtractorSpec) -> ModelBuild:
    """Factory of ``madeleine``: the published sizes."""
    return madeleine_build(FULL)
