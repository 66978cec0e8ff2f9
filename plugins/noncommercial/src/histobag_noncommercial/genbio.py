"""GenBio-PathFM (Kapse et al. 2026): a DINOv3-style ViT-g/16 run on each colour channel.

The official network (``genbio-pathfm/model.py``) takes one channel at a time: every RGB tile
becomes three grey images, each embedded by a ViT with 4 storage (register) tokens, rotary
position embeddings on the patch tokens, LayerScale and a SwiGLU MLP; the embedding is the
three final class tokens concatenated (R ‖ G ‖ B, 3 x 1536 = 4608 features). This module
rebuilds that network in plain torch under the published parameter names, so ``model.pth``
loads as it is.

The rotary tables are computed in bfloat16 (``pos_embed_rope_dtype="bf16"``, from the
``rope_embed.periods`` buffer the checkpoint holds), and queries and keys are rounded to
bfloat16 while they are rotated, even in float32 inference: the official code does so, and
the features follow it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild


@dataclass(frozen=True)
class GenBioArch:
    """Hyper-parameters of ``GenBio_PathFM_Inference``'s ``VisionTransformer``."""

    width: int = 1536
    depth: int = 40
    heads: int = 24
    patch_size: int = 16
    storage_tokens: int = 4
    mlp_ratio: float = 4.0
    swiglu_align: int = 64
    rope_base: float = 100.0
    eps: float = 1e-6

    @property
    def swiglu_hidden(self) -> int:
        """SwiGLU width: 2/3 of ``mlp_ratio * width``, rounded up to ``swiglu_align``."""
        hidden = int(int(self.width * self.mlp_ratio) * 2 / 3)
        return hidden + (-hidden % self.swiglu_align)


class RopeEmbedding(nn.Module):
    """Rotary tables (sin, cos) of an H x W patch grid, in the dtype of ``periods``."""

    def __init__(self, arch: GenBioArch) -> None:
        super().__init__()
        head_dim = arch.width // arch.heads
        quarter = torch.arange(head_dim // 4, dtype=torch.bfloat16)
        periods = arch.rope_base ** (2 * quarter / (head_dim // 2))
        self.register_buffer("periods", periods.to(torch.bfloat16), persistent=True)

    def forward(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sin, cos), each (H * W, head_dim), for patch centres scaled to [-1, 1] per axis."""
        kwargs = {"device": self.periods.device, "dtype": self.periods.dtype}
        rows = torch.arange(0.5, height, **kwargs) / height
        cols = torch.arange(0.5, width, **kwargs) / width
        coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]
        angles = angles.flatten(1, 2).tile(2)
        return torch.sin(angles), torch.cos(angles)


def _rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class Attention(nn.Module):
    """Self-attention (no qkv bias) with rotary embeddings on the patch tokens."""

    def __init__(self, arch: GenBioArch) -> None:
        super().__init__()
        self.heads = arch.heads
        self.qkv = nn.Linear(arch.width, 3 * arch.width, bias=False)
        self.proj = nn.Linear(arch.width, arch.width)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Attention of tokens (B, N, C) whose last H*W are patches."""
        batch, length, width = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, width // self.heads)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        sin, cos = rope
        prefix = length - sin.shape[0]
        rotated = []
        for t in (q, k):
            low = t.to(sin.dtype)  # the official code rotates in the tables' dtype
            low = torch.cat([low[:, :, :prefix], _rotate(low[:, :, prefix:], sin, cos)], dim=2)
            rotated.append(low.to(t.dtype))
        out = F.scaled_dot_product_attention(rotated[0], rotated[1], v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class SwiGLU(nn.Module):
    """``w3(silu(w1(x)) * w2(x))``."""

    def __init__(self, arch: GenBioArch) -> None:
        super().__init__()
        self.w1 = nn.Linear(arch.width, arch.swiglu_hidden)
        self.w2 = nn.Linear(arch.width, arch.swiglu_hidden)
        self.w3 = nn.Linear(arch.swiglu_hidden, arch.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP."""
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class LayerScale(nn.Module):
    """Per-channel scale ``gamma``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x * gamma``."""
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm block with LayerScale after attention and after the MLP."""

    def __init__(self, arch: GenBioArch) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(arch.width, eps=arch.eps)
        self.attn = Attention(arch)
        self.ls1 = LayerScale(arch.width)
        self.norm2 = nn.LayerNorm(arch.width, eps=arch.eps)
        self.mlp = SwiGLU(arch)
        self.ls2 = LayerScale(arch.width)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """One block."""
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Single-channel patch projection."""

    def __init__(self, arch: GenBioArch) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, arch.width, arch.patch_size, stride=arch.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, H, W, C) of grey images (B, 1, H*p, W*p)."""
        return self.proj(x).permute(0, 2, 3, 1)


class GenBioPathFM(nn.Module):
    """The single-channel ViT; ``forward`` embeds RGB tiles channel by channel.

    Args:
        arch: Sizes of the network.
    """

    def __init__(self, arch: GenBioArch) -> None:
        super().__init__()
        self.arch = arch
        self.patch_embed = PatchEmbed(arch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.width))
        self.storage_tokens = nn.Parameter(torch.zeros(1, arch.storage_tokens, arch.width))
        self.rope_embed = RopeEmbedding(arch)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(arch.width, eps=arch.eps)

    def class_token(self, grey: torch.Tensor) -> torch.Tensor:
        """Final normalised class token (B, width) of grey images (B, 1, H, W)."""
        patches = self.patch_embed(grey)
        batch, height, width, _ = patches.shape
        prefix = [self.cls_token, self.storage_tokens]
        tokens = torch.cat([*(t.expand(batch, -1, -1) for t in prefix), patches.flatten(1, 2)], 1)
        rope = self.rope_embed(height, width)
        for block in self.blocks:
            tokens = block(tokens, rope)
        return self.norm(tokens)[:, 0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """R ‖ G ‖ B class tokens (B, 3 * width) of a normalised batch (B, 3, H, W)."""
        batch, channels, height, width = images.shape
        grey = images.reshape(batch * channels, 1, height, width)
        return self.class_token(grey).reshape(batch, -1)


def build_genbio_image(arch: GenBioArch) -> ModelBuild:
    """A GenBio-PathFM extractor with hyper-parameters ``arch`` and random weights."""
    return ModelBuild(
        module=GenBioPathFM(arch).eval(),
        num_features=3 * arch.width,
        input_multiple=arch.patch_size,  # rotary embeddings: any whole number of patches
    )


def build_genbio_pathfm(spec: ExtractorSpec) -> ModelBuild:
    """GenBio-PathFM: 4608 features, the class tokens of the R, G and B channels."""
    return build_genbio_image(GenBioArch())
