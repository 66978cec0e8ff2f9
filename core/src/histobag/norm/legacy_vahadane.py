"""Vahadane stain normalisation without SPAMS, batched in torch.

Vahadane et al., "Structure-preserving color normalization and sparse stain separation for
histological images", IEEE TMI 2016, factorise tissue optical densities ``X`` (3 x n) into
non-negative stains ``W`` (3 x 2, unit columns) and sparse non-negative concentrations ``H``::

    min_{W >= 0, |w_j| = 1, H >= 0}  0.5 |X - W H|_F^2 + lambda * |H|_1

The reference implementation solves this with SPAMS' online dictionary learning (LARS-lasso
sub-problems). Here it is approximated by a fixed number of exact block-coordinate steps,
started from the image's Macenko estimate, so results are deterministic and batched:

* H step: with two stains the per-pixel non-negative lasso has a closed form
  (:func:`histobag.norm.ops.nnqp2`), solved exactly for every pixel at once;
* W step: the non-negative least-squares update of each row of ``W`` given ``H`` is again a
  two-variable problem with a closed form; the columns are then rescaled to unit norm.

Transform concentrations come from the same per-pixel non-negative lasso with the smaller
``lambda_conc``, are scaled to the target's 99th percentiles and recomposed with the target's
stains, as in the reference implementation.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from histobag.errors import HistobagError
from histobag.norm.legacy_macenko import _StainMatrixNormalizer, macenko_stains
from histobag.norm.ops import flatten_sample, nn_lasso2, nnqp2, order_he


def vahadane_stains(
    od: torch.Tensor,
    mask: torch.Tensor,
    init: torch.Tensor,
    lam: float = 0.1,
    n_iter: int = 20,
) -> torch.Tensor:
    """Sparse non-negative factorisation of tissue optical densities into two stains.

    Args:
        od: Optical densities ``(B, 3, N)``.
        mask: Tissue pixels ``(B, N)``; other pixels are ignored.
        init: Initial stain matrices ``(B, 3, 2)`` (e.g. Macenko's estimate).
        lam: L1 penalty on the concentrations.
        n_iter: Number of (H step, W step) rounds.

    Returns:
        ``(B, 3, 2)`` non-negative unit stain vectors, haematoxylin first.
    """
    m = mask.unsqueeze(1).to(od.dtype)
    x = od.clamp(min=0) * m
    w = _unit_columns(init.clamp(min=1e-3), fallback=torch.full_like(init, 3**-0.5))
    for _ in range(n_iter):
        h = nn_lasso2(x, w, lam) * m
        # H H' and X H' in one multi-output reduction (see macenko_stains).
        s = (h.unsqueeze(2) * torch.cat((h, x), dim=1).unsqueeze(1)).sum(-1)  # (B, 2, 5)
        a11, a12, a22 = s[:, 0, 0:1], s[:, 0, 1:2], s[:, 1, 1:2]
        w1, w2 = nnqp2(a11, a12, a22, s[:, 0, 2:], s[:, 1, 2:])  # one row of W per channel
        w = _unit_columns(torch.stack((w1, w2), dim=-1), fallback=w)
    return order_he(w)


def _unit_columns(w: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    # A stain no pixel uses collapses to zero; keep its previous direction instead.
    norms = (w * w).sum(1, keepdim=True).sqrt()
    ok = norms > 1e-6
    return torch.where(ok, w / norms.clamp(min=1e-6), fallback)


class LegacyVahadane(_StainMatrixNormalizer):
    """Vahadane stain normalizer: sparse non-negative stain separation, no SPAMS needed.

    The fit has the same form as :class:`~histobag.norm.macenko.Macenko`'s
    (``stain_matrix``, ``max_concentrations``), and so has the default preset ``"v1"``
    (Macenko's H&E reference). See the module docstring for the algorithm.

    Args:
        fit: Preset name, fit dictionary, target image(s), or ``None`` (unfitted).
        lambda_fit: L1 penalty when estimating stain matrices (0.1, as Vahadane et al.).
        lambda_conc: L1 penalty when computing concentrations (0.01).
        n_iter: Factorisation rounds (20 is ample when starting from Macenko's estimate).
        sample_pixels: Stain matrices of transformed images are estimated on a regular
            subsample of at most this many pixels per image (all pixels get concentrations).
        fit_pixels: The same cap for the pooled pixels of the fit target.
        alpha: Percentile of Macenko's initial estimate.
        beta: Minimum optical density, in every channel, of a tissue pixel.
        min_tissue: Images with a smaller fraction of tissue pixels are returned unchanged.
    """

    method = "legacy_vahadane"
    default_preset = "v1"
    # Few temporaries per pixel, and the factorisation rounds favour many tiles at once.
    cpu_chunk_pixels: ClassVar[int] = 1 << 20

    def __init__(
        self,
        fit: Any = "default",
        *,
        lambda_fit: float = 0.1,
        lambda_conc: float = 0.01,
        n_iter: int = 20,
        sample_pixels: int = 4096,
        fit_pixels: int = 1 << 16,
        alpha: float = 1.0,
        beta: float = 0.15,
        min_tissue: float = 0.01,
    ) -> None:
        if n_iter < 1 or sample_pixels < 16 or fit_pixels < 16:
            raise HistobagError("n_iter must be >= 1 and sample_pixels, fit_pixels >= 16")
        self.lambda_fit = float(lambda_fit)
        self.lambda_conc = float(lambda_conc)
        self.n_iter = int(n_iter)
        self.sample_pixels = int(sample_pixels)
        self.fit_pixels = int(fit_pixels)
        super().__init__(fit, alpha=alpha, beta=beta, min_tissue=min_tissue)

    def _params(self) -> dict[str, Any]:
        return {
            "lambda_fit": self.lambda_fit,
            "lambda_conc": self.lambda_conc,
            "n_iter": self.n_iter,
            "sample_pixels": self.sample_pixels,
            **super()._params(),
        }

    def _stains(self, od: torch.Tensor, mask: torch.Tensor, fitting: bool) -> torch.Tensor:
        # A regular subsample estimates stains just as well and keeps the iterations cheap.
        if fitting:  # one pooled target: iterate over its tissue pixels only
            od_s = flatten_sample(od[:, :, mask[0]], self.fit_pixels)
            mask_s = torch.ones(od_s.shape[::2], dtype=torch.bool, device=od.device)
        else:
            od_s = flatten_sample(od, self.sample_pixels)
            mask_s = flatten_sample(mask, self.sample_pixels)
        init = macenko_stains(od_s, mask_s, self.alpha)
        return vahadane_stains(od_s, mask_s, init, self.lambda_fit, self.n_iter)

    def _concentrations(self, od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
        return nn_lasso2(od, stains, self.lambda_conc)
