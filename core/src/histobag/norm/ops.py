"""Batched tensor helpers shared by the stain normalizers.

Everything here works on images flattened to ``(B, C, N)`` (``N = H * W``) and on per-image
pixel masks of shape ``(B, N)``, so that one call handles a whole batch even though every
image has its own number of tissue pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

import numpy as np
import torch

_F = TypeVar("_F", bound=Callable[..., torch.Tensor])
_DEVICE_TABLES: list[Any] = []


def device_table(build: _F) -> _F:
    """Cache ``build(device, ...)``: a constant tensor made once per device (and arguments).

    Rebuilding a constant for every batch costs a host-to-device copy, which waits for the
    device; cached, a batch only launches kernels. Callers must not modify the result. The
    cached builders are listed by :func:`device_tables`.
    """
    cached = cache(build)
    _DEVICE_TABLES.append(cached)
    return cached  # type: ignore[return-value]


def device_tables() -> tuple[Any, ...]:
    """Every :func:`device_table` builder (``functools.cache`` wrappers: ``cache_info()``,
    ``cache_clear()``)."""
    return tuple(_DEVICE_TABLES)


#: Incident light intensity used in the optical-density transform ``OD = -log((I + 1) / IO)``.
#: The ``+ 1`` keeps ``log`` finite for black pixels; with ``IO = 255`` a white pixel has a
#: slightly negative OD (-0.0039), which every tissue mask below discards.
IO = 255.0


def optical_density(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Optical density ``-log((I + 1) / 255)`` of uint8 RGB intensities ``I``.

    Args:
        x: uint8 tensor of any shape.
        dtype: Floating dtype of the result.

    Returns:
        A tensor of the same shape as ``x``.
    """
    return lookup(od_table(x.device, dtype), x)


@device_table
def od_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The 256-entry table of :func:`optical_density`, built once per device and dtype.

    A lookup table is faster than ``log()`` and gives every pixel bit-identical values whatever
    the batch size (vectorised and scalar tails of ``log()`` may differ by one ulp). Cached so
    that no batch pays a host-to-device copy (which waits for the device) to rebuild it.
    """
    lut = -torch.log((torch.arange(256, dtype=torch.float64) + 1.0) / IO)
    return lut.to(device=device, dtype=dtype)


def lookup(table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``table[x]`` for a uint8 tensor ``x`` and a 256-entry ``table``, returning ``x``'s shape."""
    # index_select with int32 indices is the cheapest gather on CPU (int64 doubles the traffic).
    return table.index_select(0, x.reshape(-1).int()).view(x.shape)


def od_to_uint8(od: torch.Tensor) -> torch.Tensor:
    """Invert :func:`optical_density` exactly and round to uint8: ``I = 255 * exp(-OD) - 1``."""
    return (torch.exp(-od) * IO - 1.0).round_().clamp_(0, 255).to(torch.uint8)


#: Devices where ``torch.linalg.eigh`` runs natively ("meta" only checks shapes, in tests).
_EIGH_DEVICES = frozenset({"cpu", "cuda", "meta"})


def eigenvectors(matrices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Eigenvectors of symmetric ``(..., n, n)`` matrices (columns, eigenvalues ascending).

    Computed in ``dtype`` by ``torch.linalg.eigh`` on the matrices' own device where torch
    supports it (CPU, CUDA), so no batch waits for a copy to the host and back. Elsewhere
    (e.g. MPS: no ``eigh``, no float64) on the host; the result then stays there and callers
    move it (``.to(device)`` is a no-op on the other devices).
    """
    if matrices.device.type in _EIGH_DEVICES:
        return torch.linalg.eigh(matrices.to(dtype))[1]
    return torch.linalg.eigh(matrices.to("cpu", dtype))[1]


def min_pixels(n_total: int, fraction: float) -> int:
    """Fewest tissue pixels an image of ``n_total`` pixels needs to be normalised (at least 2)."""
    return max(2, math.ceil(fraction * n_total))


def masked_quantile(x: torch.Tensor, mask: torch.Tensor | None, q: float) -> torch.Tensor:
    """Per-row quantile of ``x`` over the entries selected by ``mask``.

    Linear interpolation between order statistics, as ``numpy.quantile``'s default method.
    Only the ``~min(q, 1 - q)`` fraction of each row nearest the requested end is partially
    sorted (``torch.topk``), which is much cheaper than a full sort for the 1st or 99th
    percentile and handles a different number of valid entries in every row.

    Args:
        x: Floating tensor ``(..., N)``; must not contain NaN.
        mask: Boolean tensor broadcastable to ``x``, or ``None`` for all entries.
        q: Quantile in ``[0, 1]``.

    Returns:
        A tensor of shape ``x.shape[:-1]``. Rows without any selected entry give 0; callers
        must treat them separately.
    """
    n_cols = x.shape[-1]
    upper = q > 0.5
    if mask is None:
        n = torch.full(x.shape[:-1], n_cols, device=x.device, dtype=torch.long)
        xf = x
    else:
        mask = mask.expand_as(x)
        n = mask.sum(-1)
        # Unselected entries sort to the far end and are never read (indices are clamped).
        xf = x.masked_fill(~mask, -math.inf if upper else math.inf)
    # Rank counted from the end topk selects: q * (n - 1) from the bottom, (1 - q) * (n - 1)
    # from the top; the interpolation weight is the same either way.
    frac_rank = (1.0 - q) if upper else q
    # In x's dtype: some accelerators (MPS) have no float64.
    rank = (n - 1).clamp(min=0).to(x.dtype) * frac_rank
    lo = rank.floor()
    weight = (rank - lo).unsqueeze(-1)
    k = min(n_cols, math.floor((n_cols - 1) * frac_rank) + 2)
    vals = torch.topk(xf, k, dim=-1, largest=upper, sorted=True).values
    last = (n - 1).clamp(min=0).unsqueeze(-1)
    lo_i = lo.long().unsqueeze(-1).clamp(max=k - 1)
    hi_i = torch.minimum(lo_i + 1, last).clamp(max=k - 1)
    a = vals.gather(-1, lo_i)
    b = vals.gather(-1, hi_i)
    out = (a + weight * (b - a)).squeeze(-1)
    return torch.where(n > 0, out, torch.zeros_like(out))


def nnqp2(
    g11: torch.Tensor,
    g12: torch.Tensor,
    g22: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly minimise ``0.5 h'Gh - c'h`` over ``h >= 0`` for 2-vectors ``h``, elementwise.

    ``G = [[g11, g12], [g12, g22]]`` must be positive semi-definite; all arguments broadcast
    (``G`` is typically per image, ``c`` per pixel). With two unknowns the convex problem has a
    closed form: the unconstrained minimiser when it is non-negative, otherwise the better of
    the two one-dimensional minimisers on the axes. This solves, per pixel, the non-negative
    lasso for two stains (``c = W'x - lambda``) and, per channel, the non-negative
    least-squares update of a 3x2 stain matrix.

    Returns:
        ``(h1, h2)``, broadcast to a common shape.
    """
    tiny = torch.finfo(c1.dtype).tiny
    det = g11 * g22 - g12 * g12
    regular = det > 1e-9 * (g11 * g22).clamp(min=tiny)  # else G is singular: axes only
    inv_det = torch.where(regular, 1.0 / torch.where(regular, det, 1.0), 0.0)
    both1 = c1 * (g22 * inv_det) - c2 * (g12 * inv_det)
    both2 = c2 * (g11 * inv_det) - c1 * (g12 * inv_det)
    interior = (both1 >= 0) & (both2 >= 0) & regular
    only1 = (c1 * (1.0 / g11.clamp(min=tiny))).clamp_(min=0)
    only2 = (c2 * (1.0 / g22.clamp(min=tiny))).clamp_(min=0)
    # Each axis minimum is -0.5 * c * h there, so the lower one has the larger c * h.
    pick1 = c1 * only1 >= c2 * only2
    h1 = torch.where(interior, both1, only1 * pick1)
    h2 = torch.where(interior, both2, only2 * ~pick1)
    return h1, h2


def nn_lasso2(od: torch.Tensor, stains: torch.Tensor, lam: float) -> torch.Tensor:
    """Per-pixel non-negative lasso: ``argmin_{c >= 0} 0.5 |od - W c|^2 + lam * sum(c)``.

    Args:
        od: Optical densities ``(B, 3, N)``.
        stains: Stain matrices ``W`` of shape ``(B, 3, 2)`` (or ``(3, 2)``), one column a stain.
        lam: L1 penalty (0 gives non-negative least squares).

    Returns:
        Concentrations ``(B, 2, N)``.
    """
    w = stains if stains.dim() == 3 else stains.unsqueeze(0)
    w1, w2 = w[:, :, 0:1], w[:, :, 1:2]  # (B, 3, 1)
    g11 = (w1 * w1).sum(1)  # (B, 1)
    g12 = (w1 * w2).sum(1)
    g22 = (w2 * w2).sum(1)
    # Explicit 3-term sums instead of a matmul: elementwise arithmetic is bit-identical whatever
    # the batch size, so a batch is normalised exactly like each of its images alone.
    c1 = w1[:, 0] * od[:, 0] + w1[:, 1] * od[:, 1] + w1[:, 2] * od[:, 2] - lam
    c2 = w2[:, 0] * od[:, 0] + w2[:, 1] * od[:, 1] + w2[:, 2] * od[:, 2] - lam
    h1, h2 = nnqp2(g11, g12, g22, c1, c2)
    return torch.stack((h1, h2), dim=1)


def compose(stains: torch.Tensor, conc: torch.Tensor) -> torch.Tensor:
    """Optical density ``W @ C`` of stain matrices ``(B, 3, 2)``, concentrations ``(B, 2, N)``."""
    w = stains if stains.dim() == 3 else stains.unsqueeze(0)
    c0, c1 = conc[:, 0:1], conc[:, 1:2]  # (B, 1, N)
    return w[:, :, 0:1] * c0 + w[:, :, 1:2] * c1


def order_he(stains: torch.Tensor) -> torch.Tensor:
    """Order the two columns of ``(B, 3, 2)`` stain matrices as haematoxylin then eosin.

    Haematoxylin absorbs red light more than eosin, so it is the column with the larger first
    (red) component.
    """
    swap = stains[:, 0, 0] < stains[:, 0, 1]
    return torch.where(swap[:, None, None], stains.flip(-1), stains)


def flatten_sample(x: torch.Tensor, max_pixels: int | None) -> torch.Tensor:
    """Every ``k``-th pixel of ``(B, C, N)`` images so that at most ``max_pixels`` remain.

    A regular, deterministic subsample: the same pixels for every image and every batch size.
    """
    n = x.shape[-1]
    if max_pixels is None or n <= max_pixels:
        return x
    step = math.ceil(n / max_pixels)
    return x[..., ::step]


def torch_quantile(x: torch.Tensor, mask: torch.Tensor | None, q: float) -> torch.Tensor:
    """Per-row ``torch.quantile(row[mask], q)`` (linear interpolation), bit for bit.

    As ``torch.quantile``: the rank ``q * (n - 1)`` is computed in ``x``'s dtype, the two
    neighbouring order statistics are blended with ``torch.lerp``. Only the end of each row
    that holds them is sorted (``torch.topk``), and every row may have its own number of
    selected entries.

    Args:
        x: Floating tensor ``(..., N)`` without NaN.
        mask: Boolean tensor broadcastable to ``x``, or ``None`` for all entries.
        q: Quantile in ``[0, 1]``.

    Returns:
        A tensor of shape ``x.shape[:-1]``; rows without a selected entry give 0.
    """
    n_cols = x.shape[-1]
    upper = q > 0.5
    if mask is None:
        n = torch.full(x.shape[:-1], n_cols, device=x.device, dtype=torch.long)
        xf = x
    else:
        mask = mask.expand_as(x)
        n = mask.sum(-1)
        xf = x.masked_fill(~mask, -math.inf if upper else math.inf)
    last = (n - 1).clamp(min=0)
    # q in x's dtype, the rank in float64, the weight back in x's dtype (as torch does).
    q_x = _round_to(q, x.dtype)
    rank = last.to(torch.float64) * q_x
    below = rank.long()  # ranks are non-negative: truncation is floor
    above = rank.ceil().long()
    weight = (rank - below.to(torch.float64)).to(x.dtype)
    # How many order statistics to sort from the chosen end (a safe upper bound).
    span = (1.0 - q) if upper else q
    k = min(n_cols, math.floor((n_cols - 1) * span) + 3)
    vals = torch.topk(xf, k, dim=-1, largest=upper, sorted=True).values
    if upper:  # ascending rank r sits at position (n - 1 - r) of the descending values
        i_below, i_above = last - below, last - above
    else:
        i_below, i_above = below, above
    v_below = vals.gather(-1, i_below.clamp(0, k - 1).unsqueeze(-1)).squeeze(-1)
    v_above = vals.gather(-1, i_above.clamp(0, k - 1).unsqueeze(-1)).squeeze(-1)
    out = torch.lerp(v_below, v_above, weight)
    return torch.where(n > 0, out, torch.zeros_like(out))


_NUMPY_FLOATS = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


@cache
def _round_to(q: float, dtype: torch.dtype) -> float:
    """``q`` rounded to ``dtype`` (as ``torch.tensor(q, dtype=dtype).item()``), host-only."""
    if dtype in _NUMPY_FLOATS:
        return float(_NUMPY_FLOATS[dtype](q))
    return torch.tensor(q, dtype=dtype).item()  # e.g. bfloat16: a host tensor, no device


def standardize_brightness(x: torch.Tensor) -> torch.Tensor:
    """Brightness-standardise uint8 images ``(B, 3, N)`` as slideflow does, per image.

    ``uint8(clip(I * 255 / p90, 0, 255))`` with the operations in slideflow's order
    (``I * 255`` first, then the division) and ``p90`` exactly ``torch.quantile(I, 0.9)``
    over every value of the image; the cast truncates.
    """
    flat = x.reshape(x.shape[0], -1).float()
    p90 = torch_quantile(flat, None, 0.9).clamp(min=torch.finfo(torch.float32).tiny)
    out = (x.float() * 255.0) / p90.view(-1, *([1] * (x.dim() - 1)))
    return out.clamp_(0, 255).to(torch.uint8)
