"""LongNet encoder (dilated attention), as used by Prov-GigaPath's slide encoder, in plain PyTorch.

Written from the published description of torchscale's LongNet encoder (Ding et al., 2023) and
checked against golden outputs of the official code (see ``tests/noncommercial``). Parameter
names follow torchscale's, so the official checkpoint loads unchanged.

Dilated attention, per branch ``i`` (segment length ``s_i``, dilation ratio ``r_i``):

1. ``s = min(s_i, N)``; q/k/v are zero-padded to a multiple of ``s`` and cut into segments.
2. Each segment is zero-padded to a multiple of ``r``; head group ``j`` (heads
   ``j*H/r .. (j+1)*H/r - 1``) attends among positions ``j, j+r, j+2r, ...`` of the segment.
   Padded rows are *not* masked: they are keys with score 0 and value 0, as in the official code.
3. Branch outputs are combined per (position, head) with weights ``softmax_i(lse_i)``, where
   ``lse_i`` is the branch's attention log-sum-exp; a (position, head) a branch does not cover
   has weight 0. This equals one softmax over all the keys the branches gave that query.

Memory stays linear in N: attention runs per segment through PyTorch's fused kernels (never an
N x N matrix), and branches are merged into one running (output, log-sum-exp) accumulator.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histobag.errors import HistobagWarning

#: log-sum-exp the official code gives a (position, head) a branch does not cover.
UNCOVERED_LSE = -1e8

#: Tokens per chunk in the feed-forward network, which bounds its (N, 4D) intermediate.
FFN_CHUNK = 16384

#: Elements of the score matrix materialised at once by :func:`attention_with_lse_math`.
_MATH_CHUNK_ELEMENTS = 1 << 25


def attention_with_lse_math(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference softmax attention returning ``(out, lse)``; q/k/v (B, H, L, D), lse (B, H, L)
    float32. Queries are processed in chunks so the score matrix stays small."""
    scale = q.shape[-1] ** -0.5
    rows = max(1, _MATH_CHUNK_ELEMENTS // max(1, q.shape[0] * q.shape[1] * k.shape[2]))
    keys, values = k.float().transpose(-1, -2), v.float()  # once, not per chunk
    outs, lses = [], []
    for start in range(0, q.shape[2], rows):
        scores = torch.matmul(q[:, :, start : start + rows].float(), keys)
        scores = scores * scale
        lse = torch.logsumexp(scores, dim=-1)
        probs = torch.exp(scores - lse.unsqueeze(-1))
        outs.append(torch.matmul(probs, values).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


class AttentionFallbackWarning(HistobagWarning):
    """The fused attention kernel failed and LongNet fell back to the slower float32
    reference attention (:func:`attention_with_lse_math`)."""


#: Whether :class:`AttentionFallbackWarning` was issued in this process (it is issued once).
_fallback_warned = False


def _efficient_kernel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CUDA's memory-efficient attention with its log-sum-exp (possibly padded)."""
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
    return out, lse  # a function of its own, so tests can make it fail


def efficient_attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_with_lse` through the memory-efficient kernel (CUDA), falling back to
    :func:`attention_with_lse_math` where the kernel refuses the inputs (a dtype or shape this
    GPU's kernel lacks), with an :class:`AttentionFallbackWarning` the first time."""
    try:
        out, lse = _efficient_kernel(q, k, v)
    except (RuntimeError, NotImplementedError) as exc:
        _warn_fallback(exc, q)
        return attention_with_lse_math(q, k, v)
    return out, lse[..., : q.shape[2]].float()  # lse may be padded to a multiple of 32


def _warn_fallback(exc: BaseException, q: torch.Tensor) -> None:
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    warnings.warn(
        f"The memory-efficient attention kernel failed on {q.device} for {q.dtype} inputs "
        f"of shape {tuple(q.shape)} ({type(exc).__name__}: {detail}); the GigaPath slide "
        "encoder falls back to float32 reference attention, which is slower and needs more "
        "memory. Reported once per process.",
        AttentionFallbackWarning,
        stacklevel=2,
    )


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention (scale ``D ** -0.5``) and its log-sum-exp.

    Public ``scaled_dot_product_attention`` does not return the log-sum-exp, which dilated
    attention needs; the fused kernels behind it do. CPU uses the same flash kernel SDPA
    dispatches to, CUDA the memory-efficient kernel (see :func:`efficient_attention_with_lse`
    for where it falls back); anything else uses chunked math.

    Args:
        q: Queries (B, H, L, D).
        k: Keys (B, H, S, D).
        v: Values (B, H, S, D).

    Returns:
        ``out`` (B, H, L, D) in q's dtype and ``lse`` (B, H, L) float32.
    """
    aten = torch.ops.aten
    if q.device.type == "cpu" and hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[:2]
        return out, lse.float()
    if q.device.type == "cuda" and hasattr(aten, "_scaled_dot_product_efficient_attention"):
        return efficient_attention_with_lse(q, k, v)
    return attention_with_lse_math(q, k, v)


def _pad_dim1(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad dimension 1 of ``x`` to a multiple of ``multiple``."""
    extra = -x.shape[1] % multiple
    if extra == 0:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], extra, *x.shape[2:])], dim=1)


def _sparse_view(x: torch.Tensor, ratio: int) -> torch.Tensor:
    """(B', g, H, D) with g a multiple of ``ratio`` → the dilated rows (B', H, g/ratio, D):
    head group j keeps positions j, j+ratio, ...; heads stay in their original order."""
    bn, g, heads, dim = x.shape
    x = x.view(bn, g // ratio, ratio, ratio, heads // ratio, dim)
    x = torch.diagonal(x, dim1=2, dim2=3)  # (B', g/r, H/r, D, r): position offset == group
    return x.permute(0, 4, 2, 1, 3).reshape(bn, heads, g // ratio, dim)


class DilatedAttention(nn.Module):
    """LongNet multi-head dilated self-attention with torchscale's parameter names.

    ``inner_attn_ln`` is the sub-LayerNorm (``subln``) applied before ``out_proj``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        segment_length: Sequence[int],
        dilated_ratio: Sequence[int],
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if len(segment_length) != len(dilated_ratio):
            raise ValueError("segment_length and dilated_ratio need one entry per branch")
        for ratio in dilated_ratio:
            if num_heads % ratio:
                raise ValueError(f"num_heads {num_heads} is not divisible by ratio {ratio}")
        self.num_heads = num_heads
        self.segment_length = tuple(int(s) for s in segment_length)
        self.dilated_ratio = tuple(int(r) for r in dilated_ratio)
        # Creation order = the official checkpoint's key order.
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.inner_attn_ln = nn.LayerNorm(embed_dim, eps=eps)

    def _branch(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment: int, ratio: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One branch in the branch layout: out (B, M, H/r, D) and lse (B, M, H/r) float32,
        where layout position P is served by head group ``P mod r`` (M = segments * padded
        segment length, which can exceed N)."""
        batch, n_tokens, heads, dim = q.shape
        seg = min(segment, n_tokens)
        sparse = []
        for x in (q, k, v):
            x = _pad_dim1(x, seg)
            x = x.reshape(-1, seg, heads, dim)  # (B * n_segments, seg, H, D)
            sparse.append(_sparse_view(_pad_dim1(x, ratio), ratio))
        out, lse = attention_with_lse(*sparse)  # (B', H, g/r, D), (B', H, g/r)
        lse = lse.masked_fill(lse == 0, UNCOVERED_LSE)  # the official code does the same
        bn, _, rows, _ = out.shape
        # (B', r, H/r, g/r, D) → (B', g/r, r, H/r, D): position l*r + j is served by group j.
        out = out.view(bn, ratio, heads // ratio, rows, dim).permute(0, 3, 1, 2, 4)
        lse = lse.view(bn, ratio, heads // ratio, rows).permute(0, 3, 1, 2)
        out = out.reshape(batch, -1, heads // ratio, dim)
        lse = lse.reshape(batch, -1, heads // ratio)
        return out, lse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, E) → (B, N, E)."""
        batch, n_tokens, embed = x.shape
        heads = self.num_heads
        dim = embed // heads
        q, k, v = (
            proj(x).view(batch, n_tokens, heads, dim)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        # Running merge of the branches over a length divisible by every ratio, so each
        # branch's covered (position, head) pairs are a strided view of the accumulator.
        span = math.lcm(*self.dilated_ratio)
        padded = n_tokens + (-n_tokens % span)
        acc = torch.zeros(batch, padded, heads, dim, dtype=torch.float32, device=x.device)
        acc_lse = torch.full((batch, padded, heads), UNCOVERED_LSE, device=x.device)
        for segment, ratio in zip(self.segment_length, self.dilated_ratio):
            out, lse = self._branch(q, k, v, segment, ratio)
            # The official code crops each branch's layout to N, then pads nothing: keep the
            # first N layout positions; anything beyond N only fills the padding.
            out = _pad_dim1(out[:, :padded], padded).float()
            lse = lse[:, :padded]
            if lse.shape[1] < padded:
                fill = lse.new_full((batch, padded - lse.shape[1], lse.shape[2]), UNCOVERED_LSE)
                lse = torch.cat([lse, fill], dim=1)
            group = heads // ratio
            # Views of the covered entries: (B, P/r, H/r, D, r) and (B, P/r, H/r, r).
            acc_view = acc.view(batch, padded // ratio, ratio, ratio, group, dim)
            acc_view = torch.diagonal(acc_view, dim1=2, dim2=3)
            lse_view = acc_lse.view(batch, padded // ratio, ratio, ratio, group)
            lse_view = torch.diagonal(lse_view, dim1=2, dim2=3)
            new_out = out.view(batch, padded // ratio, ratio, group, dim).permute(0, 1, 3, 4, 2)
            new_lse = lse.view(batch, padded // ratio, ratio, group).permute(0, 1, 3, 2)
            total = torch.logaddexp(lse_view, new_lse)
            acc_view.mul_(torch.exp(lse_view - total).unsqueeze(-2))
            acc_view.add_(new_out * torch.exp(new_lse - total).unsqueeze(-2))
            lse_view.copy_(total)
        attn = acc[:, :n_tokens].reshape(batch, n_tokens, embed).to(x.dtype)
        return self.out_proj(self.inner_attn_ln(attn))


class FeedForward(nn.Module):
    """fc1 → exact GELU → sub-LayerNorm (``ffn_layernorm``) → fc2, in token chunks."""

    def __init__(self, embed_dim: int, ffn_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.ffn_layernorm = nn.LayerNorm(ffn_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, E) → (B, N, E)."""
        chunks = []
        for part in x.split(FFN_CHUNK, dim=1):
            hidden = F.gelu(self.fc1(part).float()).type_as(part)
            chunks.append(self.fc2(self.ffn_layernorm(hidden)))
        return torch.cat(chunks, dim=1)


class EncoderLayer(nn.Module):
    """Pre-LN LongNet layer: ``x + attn(ln(x))``, then ``x + ffn(ln(x))``."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        ffn_dim: int,
        segment_length: Sequence[int],
        dilated_ratio: Sequence[int],
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.self_attn = DilatedAttention(
            embed_dim, num_heads, segment_length, dilated_ratio, eps=eps
        )
        self.self_attn_layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.ffn = FeedForward(embed_dim, ffn_dim, eps=eps)
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, E) → (B, N, E)."""
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.ffn(self.final_layer_norm(x))


class LongNetEncoder(nn.Module):
    """A stack of :class:`EncoderLayer` and the output ``layer_norm``."""

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        ffn_dim: int,
        segment_length: Sequence[int],
        dilated_ratio: Sequence[int],
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(embed_dim, num_heads, ffn_dim, segment_length, dilated_ratio, eps=eps)
            for _ in range(depth)
        )
        self.layer_norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: torch.Tensor, num_layers: int | None = None) -> torch.Tensor:
        """Run the first ``num_layers`` layers (all by default), without ``layer_norm``."""
        for layer in self.layers[: len(self.layers) if num_layers is None else num_layers]:
            x = layer(x)
        return x
