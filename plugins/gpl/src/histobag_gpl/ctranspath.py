"""CTransPath: timm's Swin-T with the authors' convolutional stem, loading their checkpoint.

The authors built on timm 0.5.4. Its Swin layout differs from timm 1.x in two ways that matter
for their ``ctranspath.pth``:

* 0.5.4 merges patches (``downsample``) at the *end* of stage N; timm 1.x at the *start* of
  stage N + 1, so ``layers.N.downsample.*`` becomes ``layers.{N+1}.downsample.*``.
* 0.5.4 stores ``attn_mask`` and ``relative_position_index`` in the state dict; timm 1.x
  computes them and keeps them out of it (non-persistent buffers).

:func:`build_ctranspath` makes those buffers persistent on the built model, so the core's strict
loader fills them from the file (as 0.5.4 does) and reports them by name when absent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild

#: The only input side the network accepts (window attention masks are sized for it).
INPUT_SIZE = 224

#: Buffers that timm 0.5.4 saved and timm 1.x recomputes.
SAVED_BUFFERS = ("attn_mask", "relative_position_index")

_OFFICIAL_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


class ConvStem(nn.Module):
    """CTransPath's patch embedding, as a timm 1.x ``embed_layer`` producing NHWC tokens.

    Two 3x3 stride-2 convolutions (no bias, each followed by BatchNorm and ReLU) widen 3 → E/8
    → E/4 channels, a 1x1 convolution projects to E, and a LayerNorm normalises each token.
    Submodule names (``proj.0`` ... ``proj.6``, ``norm``) are those of the published checkpoint.

    Args:
        img_size: Input side (or (height, width)); the only size accepted.
        patch_size: Must be 4: two stride-2 convolutions.
        in_chans: Input channels.
        embed_dim: Token width E (divisible by 8).
        norm_layer: Token normalisation class (None: identity).
        strict_img_size: Refuse inputs of another size.
        output_fmt: Must be ``"NHWC"``, the layout timm 1.x Swin expects.
        device: Device of the new parameters.
        dtype: Dtype of the new parameters.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = INPUT_SIZE,
        patch_size: int | tuple[int, int] = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Callable[..., nn.Module] | None = None,
        strict_img_size: bool = True,
        output_fmt: str = "NHWC",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        if self.patch_size != (4, 4):
            raise ValueError(f"ConvStem downsamples by 4, not {patch_size}")
        if embed_dim % 8:
            raise ValueError(f"embed_dim must be divisible by 8, not {embed_dim}")
        if output_fmt != "NHWC":
            raise ValueError(f"ConvStem emits NHWC tokens, not {output_fmt}")
        self.grid_size = (self.img_size[0] // 4, self.img_size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        c1, c2 = embed_dim // 8, embed_dim // 4
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, c1, 3, stride=2, padding=1, bias=False, **dd),
            nn.BatchNorm2d(c1, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False, **dd),
            nn.BatchNorm2d(c2, **dd),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, embed_dim, 1, **dd),
        )
        self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images → (B, H/4, W/4, E) normalised tokens."""
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"Input size {tuple(x.shape[-2:])} does not match {self.img_size}")
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def persist_saved_buffers(model: nn.Module) -> None:
    """Make timm 1.x's recomputed Swin buffers part of ``model.state_dict()`` again.

    The published checkpoint holds them; loading them (rather than dropping them) keeps the model
    identical to the authors' for whatever file is loaded. Blocks without a shifted window have
    ``attn_mask=None``, which stays out of the state dict, as in timm 0.5.4.
    """
    for module in model.modules():
        own = dict(module.named_buffers(recurse=False))
        for name in SAVED_BUFFERS:
            if own.get(name) is not None:
                module.register_buffer(name, own[name], persistent=True)


def official_to_timm(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Rename a timm 0.5.4 Swin state dict (as in ``ctranspath.pth``) to timm 1.x names.

    Only the patch-merging keys move (``layers.N.downsample`` → ``layers.{N+1}.downsample``);
    every other key, unknown ones included, passes through so the strict loader can name it.
    """
    return {
        _OFFICIAL_DOWNSAMPLE.sub(lambda m: f"layers.{int(m[1]) + 1}.downsample.", key): value
        for key, value in state_dict.items()
    }


_TIMM_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def timm_to_official(key: str) -> str:
    """Inverse of :func:`official_to_timm` for one key, so errors name keys as the file does."""
    return _TIMM_DOWNSAMPLE.sub(lambda m: f"layers.{int(m[1]) - 1}.downsample.", key)


def build_ctranspath(spec: ExtractorSpec) -> ModelBuild:
    """Build CTransPath: (B, 3, 224, 224) normalised tiles → (B, 768) embeddings.

    The network is timm's ``swin_tiny_patch4_window7_224`` (patch 4, window 7, width 96,
    depths 2-2-6-2, heads 3-6-12-24) with :class:`ConvStem` as patch embedding and no classifier;
    the embedding is the final LayerNorm's output averaged over the 7x7 tokens.

    Args:
        spec: The ``ctranspath`` spec.
    """
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=0,
        img_size=INPUT_SIZE,
        embed_layer=ConvStem,
        # Modules initialise themselves; timm's extra ViT-style re-init of every Linear layer
        # would cost seconds per build for weights that are loaded over it anyway.
        weight_init="skip",
    )
    persist_saved_buffers(model)
    return ModelBuild(
        module=model,
        adapt_state_dict=official_to_timm,
        checkpoint_key=timm_to_official,
        fixed_input_size=INPUT_SIZE,
    )
