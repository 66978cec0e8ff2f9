"""FEATHER (Shao et al., ICML 2025): a gated ABMIL over CONCH v1.5 tile features.

FEATHER-24K (``MahmoodLab/abmil.base.conch_v15.pc108-24k``) is MIL-Lab's ``abmil.base`` model
trained on a 108-class pan-cancer task. The slide embedding is what the official
``ABMIL.forward_features`` returns (TRIDENT's ``feather`` slide encoder calls it):

1. ``patch_embed``: ``Linear(768 → 512)`` then ReLU, per tile;
2. ``global_attn``: one gated ABMIL head (:mod:`.abmil`, hidden width 384) scores the tiles;
3. the softmax over the tiles weights the embedded tiles' sum: 512 features.

Tile coordinates are not used. The published ``model.safetensors`` holds the Hugging Face
wrapper's state dict, every key under ``model.``; the model card says the release has no
classification head, and a ``model.classifier`` found in a file is not loaded (it does not enter
the slide embedding). Files without the ``model.`` prefix (MIL-Lab's ``pytorch_model.bin``
layout) load too.
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

#: Prefix of every key of the published checkpoint (the ``ABMILModel`` wrapper's ``model``).
CHECKPOINT_PREFIX = "model."


@dataclass(frozen=True)
class FeatherConfig:
    """FEATHER's sizes (defaults: MIL-Lab's ``abmil/base.yaml`` on CONCH v1.5 features).

    Attributes:
        in_dim: Width of the tile features (CONCH v1.5: 768).
        embed_dim: Width of the embedded tiles and of the slide embedding.
        attn_dim: Hidden width of the gated attention.
    """

    in_dim: int = 768
    embed_dim: int = 512
    attn_dim: int = 384


#: The published model.
FULL = FeatherConfig()


class Feather(ABMILSlideEncoder):
    """FEATHER's ABMIL under the official parameter names (without ``model.``)."""

    def __init__(self, config: FeatherConfig = FULL) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Sequential(nn.Linear(config.in_dim, config.embed_dim), nn.ReLU())
        self.global_attn = GatedAttention(config.embed_dim, config.attn_dim)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """``forward_features``: slide embeddings (B, embed_dim) of tile features (B, N, in_dim)."""
        tiles = self.patch_embed(features)
        return attention_pool(self.global_attn(tiles), tiles)


def feather_build(config: FeatherConfig) -> ModelBuild:
    """ModelBuild of FEATHER of sizes ``config`` (random weights)."""
    return abmil_build(
        Feather(config),
        in_features=config.in_dim,
        num_features=config.embed_dim,
        prefix=CHECKPOINT_PREFIX,
        dropped=("classifier.",),
    )


def build_feather(spec: ExtractorSpec) -> ModelBuild:
    """Factory of ``feather``: the published sizes."""
    return feather_build(FULL)
