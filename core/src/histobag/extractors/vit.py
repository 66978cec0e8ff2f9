"""Embeddings from the output tokens of a vision transformer (torch only, no timm).

Pathology foundation models publish a ViT backbone and say how to turn its output tokens into
one vector per tile: the class token (UNI, GigaPath, H-optimus-0), or the class token
concatenated with the mean of the patch tokens (Virchow, Virchow2). Register tokens, which some
models place between the class token and the patch tokens, are never part of that mean.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from histobag.errors import ExtractorArgumentError
from histobag.extractors.base import ModelBuild

#: ``"cls"``: the class token; ``"cls+mean"``: class token ‖ mean of the patch tokens.
POOLINGS = ("cls", "cls+mean")


class TokenBackbone(Protocol):
    """A ViT whose ``forward_features`` returns its final, normalised tokens (B, N, C).

    Token order: the class token, then any register tokens, then the patch tokens (timm's
    ``VisionTransformer`` follows it).
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised output tokens (B, N, C) of a normalised image batch (B, 3, H, W)."""
        ...


class TokenPooling(nn.Module):
    """Runs a ViT backbone and pools its output tokens into one embedding per image.

    Args:
        backbone: A module following :class:`TokenBackbone` (e.g. a timm ``VisionTransformer``).
        pooling: One of :data:`POOLINGS`.
        num_prefix_tokens: Tokens before the first patch token (class token + registers).
    """

    def __init__(self, backbone: nn.Module, pooling: str, num_prefix_tokens: int) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ExtractorArgumentError(
                f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}"
            )
        if not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 1:
            raise ExtractorArgumentError(
                "num_prefix_tokens counts the class token and any registers, so it is at "
                f"least 1; got {num_prefix_tokens!r}"
            )
        self.backbone = backbone
        self.pooling = pooling
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, C) for ``"cls"``, (B, 2C) for ``"cls+mean"``."""
        tokens = self.backbone.forward_features(x)
        cls = tokens[:, 0]
        if self.pooling == "cls":
            return cls
        patches = tokens[:, self.num_prefix_tokens :]
        return torch.cat([cls, patches.mean(dim=1)], dim=-1)

    def extra_repr(self) -> str:
        """Show the pooling in ``print(module)``."""
        return f"pooling={self.pooling!r}, num_prefix_tokens={self.num_prefix_tokens}"


def token_pooling_build(
    backbone: nn.Module,
    *,
    pooling: str,
    num_prefix_tokens: int,
    fixed_input_size: int | None = None,
) -> ModelBuild:
    """Wrap a ViT backbone in :class:`TokenPooling` and describe how its weights load.

    Weights load into ``backbone`` itself, so a flat checkpoint loads with its published key
    names; the pooling wrapper adds no parameters.

    Args:
        backbone: A module following :class:`TokenBackbone`.
        pooling: One of :data:`POOLINGS`.
        num_prefix_tokens: Tokens before the first patch token (class token + registers).
        fixed_input_size: The only input side the backbone accepts, if it has one (a ViT
            without position-embedding interpolation).
    """
    module = TokenPooling(backbone, pooling, num_prefix_tokens)
    return ModelBuild(module=module, weights_target=backbone, fixed_input_size=fixed_input_size)
