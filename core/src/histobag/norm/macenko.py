"""slideflow's Macenko stain normalizers (``macenko``, ``macenko_fast``), batched in torch.

Macenko et al., "A method for normalizing histology slides for quantitative analysis",
ISBI 2009, as slideflow 3.0.2's torch backend computes it. Per image, in float32:

1. ``macenko`` only: brightness standardisation, ``uint8(clip(I * 255 / p90, 0, 255))`` with
   ``p90`` the 90th percentile of all the image's values (the cast truncates);
   ``macenko_fast`` skips it (that is the only difference between the two);
2. optical density ``OD = -log((I + 1) / 255)``;
3. tissue pixels: OD >= ``beta`` in every channel;
4. eigenvectors of the tissue ODs' covariance, taken as ``torch.linalg.eigh`` returns them
   (signs included: they decide where the angles below wrap, as in slideflow); each tissue
   pixel's angle is ``atan2(<OD, v_largest>, <OD, v_second>)``;
5. the ``alpha`` and ``100 - alpha`` percentile angles (``torch.quantile``'s linear
   interpolation, reproduced exactly) give two stain vectors in that plane; haematoxylin is
   the one with the larger red OD;
6. concentrations of *all* pixels by least squares; each stain's are divided by
   ``p99(C) / target_p99`` and recomposed with the target stain matrix;
7. ``uint8(clip(255 * exp(-OD), 0, 255))``, truncating like slideflow's cast.

The fit is the stain matrix of step 5 and the 99th percentiles of step 6 (slideflow's
``stain_matrix_target`` and ``target_concentrations``). Everything, the eigen-decompositions
of the ``(B, 3, 3)`` covariances included, runs on the batch's device, as slideflow's does
(eigenvector signs are those of that device's ``eigh``). Images with too little tissue (or
degenerate stains) are returned unchanged, as slideflow returns the original image when its
normalisation fails.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from histobag.norm.legacy_macenko import _StainMatrixNormalizer
from histobag.norm.ops import (
    compose,
    device_table,
    eigenvectors,
    lookup,
    min_pixels,
    standardize_brightness,
    torch_quantile,
)

#: Incident light intensity ``Io`` of slideflow's Macenko normalizers.
IO = 255


def optical_density32(x: torch.Tensor) -> torch.Tensor:
    """float32 ``-log((I + 1) / 255)`` of uint8 ``I``, computed as slideflow does (float32)."""
    return lookup(od32_table(x.device), x)


@device_table
def od32_table(device: torch.device) -> torch.Tensor:
    """The 256-entry table of :func:`optical_density32`, copied to each device once."""
    return (-torch.log((torch.arange(256, dtype=torch.float32) + 1.0) / IO)).to(device)


def _dot3(v: torch.Tensor, od: torch.Tensor) -> torch.Tensor:
    """``<v, OD>`` per pixel for vectors ``(B, 3)`` and ODs ``(B, 3, N)`` (elementwise sums)."""
    return v[:, 0:1] * od[:, 0] + v[:, 1:2] * od[:, 1] + v[:, 2:3] * od[:, 2]


def slideflow_macenko_stains(od: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """Each image's H&E stain matrix as slideflow's Macenko estimates it.

    Args:
        od: float32 optical densities ``(B, 3, N)``.
        mask: Tissue pixels ``(B, N)``; each image needs at least two.
        alpha: Percentile (0-50) of the extreme angles taken as the stain directions.

    Returns:
        float32 ``(B, 3, 2)`` unit stain vectors (columns haematoxylin, eosin). Images with
        fewer than two tissue pixels get meaningless values: callers mask them.
    """
    device = od.device
    n = mask.sum(-1)
    m = mask.unsqueeze(1).to(od.dtype)
    # Sums in float64, each image's in one multi-output reduction: identical whatever the
    # batch size (a batch is normalised exactly like each of its images alone).
    mean = (od * m).sum(-1, dtype=torch.float64) / n.clamp(min=1).unsqueeze(-1)
    d = ((od.double() - mean.unsqueeze(-1)) * m).float()
    scatter = (d.unsqueeze(2) * d.unsqueeze(1)).sum(-1, dtype=torch.float64)  # (B, 3, 3)
    cov = scatter / (n - 1).clamp(min=1).to(torch.float64)[:, None, None]
    # float32, as slideflow, on the batch's device (the eigenvectors' signs matter, see above).
    vecs = eigenvectors(cov, torch.float32).to(device)  # eigenvalues ascending
    e_second, e_first = vecs[..., 1], vecs[..., 2]  # (B, 3)
    phi = torch.atan2(_dot3(e_first, od), _dot3(e_second, od))
    lo = torch_quantile(phi, mask, alpha / 100).unsqueeze(-1)
    hi = torch_quantile(phi, mask, 1 - alpha / 100).unsqueeze(-1)
    v_min = e_second * torch.cos(lo) + e_first * torch.sin(lo)
    v_max = e_second * torch.cos(hi) + e_first * torch.sin(hi)
    min_first = (v_min[:, 0] > v_max[:, 0])[:, None]
    h = torch.where(min_first, v_min, v_max)
    e = torch.where(min_first, v_max, v_min)
    return torch.stack((h, e), dim=-1)


def lstsq_concentrations(od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
    """Least-squares concentrations ``pinv(W) @ OD`` (float32 ``(B, 2, N)``).

    The pseudo-inverse of each ``(3, 2)`` stain matrix is formed in float64.
    """
    w = stains.double()
    w1, w2 = w[:, :, 0], w[:, :, 1]
    g11 = (w1 * w1).sum(-1, keepdim=True)
    g12 = (w1 * w2).sum(-1, keepdim=True)
    g22 = (w2 * w2).sum(-1, keepdim=True)
    det = (g11 * g22 - g12 * g12).clamp(min=torch.finfo(torch.float64).tiny)
    p1 = ((g22 * w1 - g12 * w2) / det).to(od.dtype)
    p2 = ((g11 * w2 - g12 * w1) / det).to(od.dtype)
    return torch.stack((_dot3(p1, od), _dot3(p2, od)), dim=1)


class MacenkoFast(_StainMatrixNormalizer):
    """slideflow's ``macenko_fast``: Macenko stain normalisation, no brightness standardisation.

    The fit is ``{"stain_matrix": 3x2 (rows R, G, B; columns H, E), "max_concentrations":
    [H, E]}`` (slideflow's ``stain_matrix_target`` and ``target_concentrations``); presets
    ``v1``, ``v2`` and ``v3`` (the default) are slideflow's.

    Args:
        fit: ``"default"``, a preset name, a fit dictionary, target image(s), or ``None``.
        alpha: Percentile of the extreme angles taken as stain directions (default 1).
        beta: Minimum optical density, in every channel, of a tissue pixel (default 0.15).
        min_tissue: Images with a smaller fraction of tissue pixels are returned unchanged.
    """

    method = "macenko_fast"
    quantile = staticmethod(torch_quantile)  # bit for bit torch.quantile, as slideflow's
    #: Whether images are brightness-standardised before fitting and transforming.
    standardize: ClassVar[bool] = False

    def _estimate(
        self, x: torch.Tensor, fitting: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return OD, stain matrices and validity for uint8 images ``(B, 3, N)`` (float32)."""
        if self.standardize:
            x = standardize_brightness(x)
        od = optical_density32(x)
        mask = (od >= self.beta).all(1)
        valid = mask.sum(-1) >= min_pixels(x.shape[-1], self.min_tissue)
        stains = slideflow_macenko_stains(od, mask, self.alpha)
        # Two (nearly) parallel stain vectors cannot separate anything.
        w1, w2 = stains[:, :, 0], stains[:, :, 1]
        gram_det = (w1 * w1).sum(-1) * (w2 * w2).sum(-1) - (w1 * w2).sum(-1) ** 2
        valid = valid & (gram_det > 1e-4) & torch.isfinite(stains).all(-1).all(-1)
        return od, stains, valid

    def _concentrations(self, od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
        return lstsq_concentrations(od, stains)

    def _transform(self, x: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        od, stains, valid = self._estimate(x)
        ref = target["stain_matrix"].unsqueeze(0)
        # Invalid images get the target's stains so that no NaN arises; restored below.
        stains = torch.where(valid[:, None, None], stains, ref)
        conc = self._concentrations(od, stains)
        max_c = self.quantile(conc, None, 0.99)  # (B, 2)
        valid = valid & (max_c > 1e-3).all(-1)
        ratio = max_c.clamp(min=1e-3) / target["max_concentrations"]
        conc = conc / ratio.unsqueeze(-1)
        out = (torch.exp(-compose(ref, conc)) * IO).clamp_(0, 255).to(torch.uint8)
        return torch.where(valid[:, None, None], out, x)


class Macenko(MacenkoFast):
    """slideflow's ``macenko``: brightness standardisation, then Macenko stain normalisation.

    Each image (and the fit target) is first standardised to its 90th-percentile brightness
    (see :func:`standardize_brightness`); otherwise as :class:`MacenkoFast`, with the
    ``macenko`` presets.

    Args:
        fit: ``"default"``, a preset name, a fit dictionary, target image(s), or ``None``.
        alpha: Percentile of the extreme angles taken as stain directions (default 1).
        beta: Minimum optical density, in every channel, of a tissue pixel (default 0.15).
        min_tissue: Images with a smaller fraction of tissue pixels are returned unchanged.
    """

    method = "macenko"
    standardize: ClassVar[bool] = True
