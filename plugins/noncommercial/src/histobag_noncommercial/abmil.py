"""Gated attention-based MIL pooling (ABMIL), shared by the Mahmood Lab slide encoders.

Gated ABMIL (Ilse et al., ICML 2018) scores each tile of a bag with
``w · (tanh(A h) * sigmoid(B h))`` and returns the softmax-weighted sum of the tiles. MADELEINE
(four such heads, one per slice of its tile embeddings) and FEATHER (one head) use it with the
same parameter names: ``attention_a.0`` (the tanh branch), ``attention_b.0`` (the sigmoid
gate) and ``attention_c`` (the score). Their dropout layers are omitted here: they hold no
weights and do nothing at inference.

These slide encoders ignore tile coordinates; :class:`ABMILSlideEncoder` takes them anyway, as
histobag's slide-encoder contract ``net(features, coords, extent_px)`` asks.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import nn

from histobag.extractors.base import ModelBuild
from histobag.slide_encoding import SlideEncoderExtractor


class GatedAttention(nn.Module):
    """One gated attention head: tile features (B, N, D) → unnormalised scores (B, N).

    Args:
        in_dim: Width of the tile features it scores.
        hidden_dim: Width of the tanh and sigmoid branches.
    """

    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh())
        self.attention_b = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Sigmoid())
        self.attention_c = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (B, N) of the tiles ``x`` (B, N, in_dim)."""
        return self.attention_c(self.attention_a(x) * self.attention_b(x)).squeeze(-1)


def attention_pool(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Softmax of ``scores`` (B, N) over the tiles, then the weighted sum of ``values``
    (B, N, D): (B, D)."""
    weights = torch.softmax(scores, dim=-1)
    return torch.bmm(weights.unsqueeze(1), values).squeeze(1)


class ABMILSlideEncoder(nn.Module):
    """Base of the ABMIL slide encoders: :meth:`forward` takes histobag's slide-encoder
    arguments and hands the features to :meth:`embed`."""

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Slide embeddings (B, E) of tile features (B, N, D)."""
        raise NotImplementedError

    def forward(
        self,
        features: torch.Tensor,
        coords: torch.Tensor | None = None,
        extent_px: int | None = None,
    ) -> torch.Tensor:
        """Slide embeddings (B, E) of tile features (B, N, D).

        Args:
            features: Tile features (B, N, D).
            coords: Level-0 tile corners (B, N, 2); not used by these models.
            extent_px: Level-0 tile side; not used by these models.
        """
        return self.embed(features)


def prefix_adapter(
    prefix: str, *, dropped: Collection[str] = ()
) -> tuple[Callable[[dict[str, Any]], dict[str, Any]], Callable[[str], str]]:
    """``(adapt_state_dict, checkpoint_key)`` for checkpoints whose keys carry ``prefix``.

    ``adapt_state_dict`` removes ``prefix`` where a key starts with it (the official loaders
    accept files with and without it) and drops the keys under ``dropped`` (parts of the
    checkpoint that do not contribute to the slide embedding); ``checkpoint_key`` names a
    module key as the published file does, for error messages.
    """

    def adapt(state_dict: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in state_dict.items():
            own = key[len(prefix) :] if key.startswith(prefix) else key
            if not own.startswith(tuple(dropped)):
                out[own] = value
        return out

    def checkpoint_key(key: str) -> str:
        return prefix + key

    return adapt, checkpoint_key


def abmil_build(
    module: ABMILSlideEncoder,
    *,
    in_features: int,
    num_features: int,
    prefix: str,
    dropped: Collection[str] = (),
) -> ModelBuild:
    """ModelBuild of an ABMIL slide encoder taking ``in_features``-wide tile features, whose
    checkpoint keys carry ``prefix`` (see :func:`prefix_adapter`)."""
    adapt, checkpoint_key = prefix_adapter(prefix, dropped=dropped)
    return ModelBuild(
        module=module.eval(),
        num_features=num_features,
        adapt_state_dict=adapt,
        checkpoint_key=checkpoint_key,
        extractor_cls=SlideEncoderExtractor,
        extra={"in_features": in_features},
    )
