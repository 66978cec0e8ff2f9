"""Macenko stain normalisation, batched in torch.

Macenko et al., "A method for normalizing histology slides for quantitative analysis",
ISBI 2009. Per image:

1. optical density ``OD = -log((I + 1) / 255)`` (see :data:`histobag.norm.ops.IO`);
2. tissue pixels: OD >= ``beta`` in all three channels;
3. the plane of the two largest eigenvectors of the tissue OD covariance;
4. the angle of each tissue pixel's projection in that plane; the ``alpha`` and
   ``100 - alpha`` percentile angles give the two stain vectors, haematoxylin being the one
   with the larger red OD;
5. concentrations of every pixel by least squares, scaled so that their 99th percentiles
   match the target's, and recomposed with the target's stain vectors.

Eigen-decompositions of the ``(B, 3, 3)`` covariances run in float64 on the batch's device
(their signs are then fixed, so they do not depend on the device's ``eigh``); the host is
used only where the device has no ``eigh`` (see :func:`histobag.norm.ops.eigenvectors`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from histobag.errors import ConfigError, HistobagError
from histobag.norm.base import StainNormalizer, as_batch
from histobag.norm.ops import (
    compose,
    eigenvectors,
    masked_quantile,
    min_pixels,
    od_to_uint8,
    optical_density,
    order_he,
)


def macenko_stains(od: torch.Tensor, mask: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Estimate each image's H&E stain matrix with Macenko's method.

    Args:
        od: Optical densities ``(B, 3, N)``.
        mask: Tissue pixels ``(B, N)``; each image needs at least two.
        alpha: Percentile (0-50) of the extreme angles taken as the stain directions.

    Returns:
        ``(B, 3, 2)`` unit stain vectors (columns haematoxylin, eosin) in ``od``'s dtype.
        Images with fewer than two tissue pixels get meaningless values: callers mask them.
    """
    dtype, device = od.dtype, od.device
    n = mask.sum(-1)
    m = mask.unsqueeze(1).to(dtype)
    mean = (od * m).sum(-1) / n.clamp(min=1).unsqueeze(-1).to(dtype)
    d = (od - mean.unsqueeze(-1)) * m
    # One outer product per pixel, reduced in a single multi-output call: CPU reductions with
    # several outputs per image never split a row across threads, so the sums are identical
    # whatever the batch size (a batch is normalised exactly like each of its images alone).
    scatter = (d.unsqueeze(2) * d.unsqueeze(1)).sum(-1)  # (B, 3, 3)
    cov = scatter / (n - 1).clamp(min=1).to(dtype)[:, None, None]
    vecs = eigenvectors(cov, torch.float64)  # eigenvalues ascending; on the device if it can
    v1, v2 = vecs[..., 2], vecs[..., 1]
    # Eigenvector signs are arbitrary. Point the principal one into the positive octant (all
    # tissue ODs are positive, so their angles then stay in (-pi/2, pi/2) and never wrap);
    # fix the second's sign only for reproducibility (the result does not depend on it).
    v1 = v1 * torch.where(v1.sum(-1) < 0, -1.0, 1.0).unsqueeze(-1)
    v2 = v2 * torch.where(v2[:, 0] < 0, -1.0, 1.0).unsqueeze(-1)
    v1 = v1.to(device=device, dtype=dtype)
    v2 = v2.to(device=device, dtype=dtype)
    t1 = v1[:, 0:1] * od[:, 0] + v1[:, 1:2] * od[:, 1] + v1[:, 2:3] * od[:, 2]
    t2 = v2[:, 0:1] * od[:, 0] + v2[:, 1:2] * od[:, 1] + v2[:, 2:3] * od[:, 2]
    phi = torch.atan2(t2, t1)
    lo = masked_quantile(phi, mask, alpha / 100.0).unsqueeze(-1)
    hi = masked_quantile(phi, mask, 1.0 - alpha / 100.0).unsqueeze(-1)
    v_lo = v1 * torch.cos(lo) + v2 * torch.sin(lo)
    v_hi = v1 * torch.cos(hi) + v2 * torch.sin(hi)
    return order_he(torch.stack((v_lo, v_hi), dim=-1))


def lstsq_concentrations(od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
    """Least-squares stain concentrations ``pinv(W) @ OD``.

    Args:
        od: Optical densities ``(B, 3, N)``.
        stains: Stain matrices ``(B, 3, 2)`` with independent columns.

    Returns:
        Concentrations ``(B, 2, N)`` (may be negative).
    """
    w1, w2 = stains[:, :, 0], stains[:, :, 1]  # (B, 3)
    g11 = (w1 * w1).sum(-1, keepdim=True)
    g12 = (w1 * w2).sum(-1, keepdim=True)
    g22 = (w2 * w2).sum(-1, keepdim=True)
    det = (g11 * g22 - g12 * g12).clamp(min=torch.finfo(od.dtype).tiny)
    p1 = (g22 * w1 - g12 * w2) / det  # rows of the pseudo-inverse, (B, 3)
    p2 = (g11 * w2 - g12 * w1) / det
    c1 = p1[:, 0:1] * od[:, 0] + p1[:, 1:2] * od[:, 1] + p1[:, 2:3] * od[:, 2]
    c2 = p2[:, 0:1] * od[:, 0] + p2[:, 1:2] * od[:, 1] + p2[:, 2:3] * od[:, 2]
    return torch.stack((c1, c2), dim=1)


class _StainMatrixNormalizer(StainNormalizer):
    """Shared machinery of the stain-separation normalizers (Macenko, Vahadane).

    Subclasses provide the per-image stain estimate (``_stains``) and the concentrations
    (``_concentrations``); the fit is a target stain matrix and max concentrations.
    """

    fit_shapes: ClassVar[dict[str, tuple[int, ...]]] = {
        "stain_matrix": (3, 2),
        "max_concentrations": (2,),
    }
    #: Per-row quantile ``(x, mask, q)`` used for the concentrations' 99th percentiles.
    quantile: ClassVar[Callable[..., torch.Tensor]] = staticmethod(masked_quantile)

    def __init__(
        self,
        fit: Any = "default",
        *,
        alpha: float = 1.0,
        beta: float = 0.15,
        min_tissue: float = 0.01,
    ) -> None:
        if not 0.0 <= alpha < 50.0:
            raise HistobagError(f"alpha must be a percentile in [0, 50), got {alpha!r}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        super().__init__(fit, min_tissue=min_tissue)

    def _params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, **super()._params()}

    def _check_fit(self, fit: dict[str, torch.Tensor]) -> None:
        _check_stain_fit(fit)

    def _stains(self, od: torch.Tensor, mask: torch.Tensor, fitting: bool) -> torch.Tensor:
        """Per-image stain matrices ``(B, 3, 2)`` of optical densities with tissue ``mask``."""
        raise NotImplementedError

    def _concentrations(self, od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
        """Per-pixel concentrations ``(B, 2, N)`` given stain matrices ``(B, 3, 2)``."""
        raise NotImplementedError

    def _estimate(
        self, x: torch.Tensor, fitting: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return OD, per-image stain matrices and validity for uint8 images ``(B, 3, N)``.

        Fitting works in float64 for accuracy, transforms in float32 for speed.
        """
        od = optical_density(x, torch.float64 if fitting else torch.float32)
        mask = (od >= self.beta).all(1)
        valid = mask.sum(-1) >= min_pixels(x.shape[-1], self.min_tissue)
        stains = self._stains(od, mask, fitting)
        # Two (nearly) parallel stain vectors cannot separate anything (e.g. a uniformly dark
        # tile): sin^2 of the angle between the unit columns must exceed 1e-4 (about 0.6 deg).
        w1, w2 = stains[:, :, 0], stains[:, :, 1]
        gram_det = (w1 * w1).sum(-1) * (w2 * w2).sum(-1) - (w1 * w2).sum(-1) ** 2
        return od, stains, valid & (gram_det > 1e-4)

    def estimate_stains(self, images: Any) -> torch.Tensor:
        """Estimate the stain matrix of each image (no target involved).

        Args:
            images: Images in any layout :meth:`transform` accepts.

        Returns:
            float32 tensor ``(B, 3, 2)`` (or ``(3, 2)`` for a single image) on the images'
            device: unit columns haematoxylin, eosin; NaN for images with too little tissue.
        """
        x, _ = as_batch(images)
        single = getattr(images, "ndim", 4) == 3
        b, _, h, w = x.shape
        with torch.no_grad():
            _, stains, valid = self._estimate(x.reshape(b, 3, h * w))
        stains = torch.where(valid[:, None, None], stains, torch.nan)
        return stains[0] if single else stains

    def _fit_pixels(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        od, stains, valid = self._estimate(pixels, fitting=True)
        if not bool(valid[0]):
            raise HistobagError(
                f"the target has too little tissue to fit {type(self).__name__}: fewer than "
                f"{self.min_tissue:.0%} of its pixels have optical density >= {self.beta} in "
                "every channel. Fit on tissue, not background."
            )
        max_c = self.quantile(self._concentrations(od, stains), None, 0.99)
        return {"stain_matrix": stains[0], "max_concentrations": max_c[0]}

    def _transform(self, x: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        od, stains, valid = self._estimate(x)
        ref = target["stain_matrix"].unsqueeze(0)
        # Blank images get the target's stains so no NaN or inf arises; they are restored below.
        stains = torch.where(valid[:, None, None], stains, ref)
        conc = self._concentrations(od, stains)
        max_c = masked_quantile(conc, None, 0.99)
        valid = valid & (max_c > 1e-3).all(-1)
        scale = target["max_concentrations"] / max_c.clamp(min=1e-3)
        out = od_to_uint8(compose(ref, conc * scale.unsqueeze(-1)))
        return torch.where(valid[:, None, None], out, x)


class LegacyMacenko(_StainMatrixNormalizer):
    """Macenko stain normalizer (eigenvector plane of tissue OD, percentile angles).

    The fit is ``{"stain_matrix": 3x2 (rows R, G, B; columns H, E), "max_concentrations":
    [H, E]}``; the default preset ``"v1"`` is Macenko's published H&E reference.

    Args:
        fit: Preset name, fit dictionary, target image(s), or ``None`` (unfitted).
        alpha: Percentile of the extreme angles taken as stain directions (default 1).
        beta: Minimum optical density, in every channel, of a tissue pixel (default 0.15).
        min_tissue: Images with a smaller fraction of tissue pixels are returned unchanged.
    """

    method = "legacy_macenko"
    default_preset = "v1"

    def _stains(self, od: torch.Tensor, mask: torch.Tensor, fitting: bool) -> torch.Tensor:
        return macenko_stains(od, mask, self.alpha)

    def _concentrations(self, od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
        return lstsq_concentrations(od, stains)


def _check_stain_fit(fit: dict[str, torch.Tensor]) -> None:
    norms = fit["stain_matrix"].norm(dim=0)
    if (norms < 1e-6).any():
        raise ConfigError("fit['stain_matrix'] has a zero column; each column is a stain vector")
    if (fit["max_concentrations"] <= 0).any():
        raise ConfigError("fit['max_concentrations'] must be positive")
