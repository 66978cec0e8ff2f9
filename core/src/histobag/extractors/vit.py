"""Embeddings from the output tokens of a vision transformer.

Pathology foundation models publish a ViT backbone and say how to turn its output tokens into
one vector per tile: the class token (UNI, GigaPath, H-optimus-0), or the class token
concatenated with the mean of the patch tokens (Virchow, Virchow2). Register tokens, which some
models place between the class token and the patch tokens, are never part of that mean.

:func:`token_pooling_build` wraps any such backbone (torch only); :func:`timm_vit_build` is the
one build path of the models whose card says "``timm.create_model(arch, **kwargs)``" (it
imports timm, which the packs using it depend on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

from histobag.errors import ExtractorArgumentError
from histobag.extractors.base import ModelBuild

#: ``"cls"``: the class token; ``"cls+mean"``: class token ‖ mean of the patch tokens.
POOLINGS = ("cls", "cls+mean")


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ExtractorArgumentError(
            f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}"
        )


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
        _check_pooling(pooling)
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
    input_multiple: int | None = None,
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
        input_multiple: What every input side must be a multiple of (the patch size of a ViT
            that interpolates its position embeddings).
    """
    module = TokenPooling(backbone, pooling, num_prefix_tokens)
    return ModelBuild(
        module=module,
        weights_target=backbone,
        fixed_input_size=fixed_input_size,
        input_multiple=input_multiple,
    )


def timm_vit_build(arch: str, timm_kwargs: Mapping[str, Any], *, pooling: str) -> ModelBuild:
    """Build the timm ViT a model card describes, pooled into one embedding per tile.

    Steps:

    1. ``timm.create_model(arch, pretrained=False, **timm_kwargs)``: the architecture with the
       card's (or the published ``config.json``'s) arguments, random weights. histobag then
       loads the official checkpoint into it strictly, under its published key names.
    2. The class token and any register tokens come first (``num_prefix_tokens`` of the
       network), so the patch-token mean of ``"cls+mean"`` starts after them.
    3. A network without ``dynamic_img_size`` accepts only its ``img_size``: that becomes
       ``fixed_input_size``, so other tile sizes fail with a message instead of a shape error;
       one with it accepts any size made of whole patches: the patch size becomes
       ``input_multiple``.
    4. :func:`token_pooling_build` wraps it in :class:`TokenPooling`; the weights load into
       the network itself.

    Args:
        arch: A timm architecture name, e.g. ``"vit_large_patch16_224"``.
        timm_kwargs: The card's ``create_model`` arguments (``img_size``, ``init_values``,
            ``mlp_layer``, ``reg_tokens``...), written out as published.
        pooling: One of :data:`POOLINGS`.

    Raises:
        ExtractorArgumentError: ``pooling`` is unknown, or a fixed-size network's input is not
            square.
    """
    import timm  # heavy; the packs that call this depend on it, the core does not

    _check_pooling(pooling)  # before building a network of a billion parameters
    network = timm.create_model(arch, pretrained=False, **timm_kwargs)
    fixed_input_size = input_multiple = None
    if network.dynamic_img_size:
        if not getattr(network.patch_embed, "dynamic_img_pad", False):  # timm asserts instead
            input_multiple = int(network.patch_embed.patch_size[0])
    else:
        height, width = network.patch_embed.img_size
        if height != width:
            raise ExtractorArgumentError(
                f"{arch} with img_size {(height, width)} takes non-square input, which tiles "
                "never are: give img_size as one number or set dynamic_img_size=True"
            )
        fixed_input_size = int(height)
    return token_pooling_build(
        network,
        pooling=pooling,
        num_prefix_tokens=network.num_prefix_tokens,
        fixed_input_size=fixed_input_size,
        input_multiple=input_multiple,
    )
