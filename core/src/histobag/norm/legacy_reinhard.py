"""Reinhard colour transfer in CIE L*a*b*, batched in torch.

Reinhard et al., "Color transfer between images", IEEE CG&A 2001: shift and scale each
L*a*b* channel of an image so that its mean and standard deviation match the target's::

    lab' = (lab - mean_source) / std_source * std_target + mean_target

Statistics are population (ddof 0) moments. The original paper works in Ruderman's
l-alpha-beta space; like most histology toolkits this uses CIE L*a*b* (:mod:`histobag.norm.color`).

Tissue rule: a pixel is tissue when its L* is below ``luminosity_threshold`` (90 by
default; glass and background are near-white, L* > 90). ``reinhard`` uses all pixels for the
statistics and transforms every pixel; ``reinhard_mask`` uses tissue pixels only and leaves
background pixels untouched, so white background cannot be tinted. Either way an image with
fewer than ``min_tissue`` tissue pixels is returned unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from histobag.errors import ConfigError, HistobagError
from histobag.norm.base import StainNormalizer
from histobag.norm.color import lab_to_rgb, rgb_to_lab
from histobag.norm.ops import min_pixels

# Below this standard deviation a channel is treated as flat (e.g. a* and b* of a grey image,
# which are zero up to rounding): it is centred on the target mean but noise is not amplified.
_STD_FLOOR = 0.01


def lab_moments(
    lab: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and standard deviation of ``(B, 3, N)`` L*a*b* pixels.

    Args:
        lab: L*a*b* values ``(B, 3, N)``.
        weights: Optional boolean mask ``(B, N)`` of the pixels to use.

    Returns:
        ``(means, stds)``, each ``(B, 3)``.
    """
    if weights is None:
        mean = lab.mean(-1)
        var = (lab - mean.unsqueeze(-1)).square().mean(-1)
    else:
        m = weights.unsqueeze(1).to(lab.dtype)
        n = weights.sum(-1).clamp(min=1).unsqueeze(-1).to(lab.dtype)
        mean = (lab * m).sum(-1) / n
        var = ((lab - mean.unsqueeze(-1)).square() * m).sum(-1) / n
    return mean, var.sqrt()


class LegacyReinhard(StainNormalizer):
    """Reinhard colour transfer: match per-channel L*a*b* mean and std to the target.

    The fit is ``{"means": [L, a, b], "stds": [L, a, b]}``; the default preset ``"v1"`` is
    derived from an H&E-like reference (see :mod:`histobag.norm.presets`).

    Args:
        fit: Preset name, fit dictionary, target image(s), or ``None`` (unfitted).
        luminosity_threshold: Pixels with L* below it are tissue (default 90).
        min_tissue: Images with a smaller fraction of tissue pixels are returned unchanged.
    """

    method = "legacy_reinhard"
    default_preset = "v1"
    fit_shapes: ClassVar[dict[str, tuple[int, ...]]] = {"means": (3,), "stds": (3,)}
    #: Whether statistics and the transform are restricted to tissue pixels.
    masked: ClassVar[bool] = False

    def __init__(
        self,
        fit: Any = "default",
        *,
        luminosity_threshold: float = 90.0,
        min_tissue: float = 0.01,
    ) -> None:
        if not 0.0 < luminosity_threshold <= 100.0:
            raise HistobagError(
                f"luminosity_threshold is an L* value in (0, 100], got {luminosity_threshold!r}"
            )
        self.luminosity_threshold = float(luminosity_threshold)
        super().__init__(fit, min_tissue=min_tissue)

    def _params(self) -> dict[str, Any]:
        return {"luminosity_threshold": self.luminosity_threshold, **super()._params()}

    def _check_fit(self, fit: dict[str, torch.Tensor]) -> None:
        if (fit["stds"] <= 0).any():
            raise ConfigError("fit['stds'] must be positive")

    def _stats(
        self, lab: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return tissue mask, validity, means and stds of ``(B, 3, N)`` L*a*b* images."""
        tissue = lab[:, 0] < self.luminosity_threshold
        valid = tissue.sum(-1) >= min_pixels(lab.shape[-1], self.min_tissue)
        mean, std = lab_moments(lab, tissue if self.masked else None)
        return tissue, valid, mean, std

    def _fit_pixels(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        lab = rgb_to_lab(pixels.to(torch.float64) / 255.0, dim=1)
        _, valid, mean, std = self._stats(lab)
        if not bool(valid[0]):
            raise HistobagError(
                f"the target has too little tissue to fit {type(self).__name__}: fewer than "
                f"{self.min_tissue:.0%} of its pixels have L* < {self.luminosity_threshold}."
            )
        return {"means": mean[0], "stds": std[0].clamp(min=_STD_FLOOR)}

    def _transform(self, x: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        lab = rgb_to_lab(x, dim=1)
        tissue, valid, mean, std = self._stats(lab)
        scale = target["stds"] / std.clamp(min=_STD_FLOOR)
        shift = target["means"] - mean * scale
        lab = lab * scale.unsqueeze(-1) + shift.unsqueeze(-1)
        out = (lab_to_rgb(lab, dim=1) * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        if self.masked:
            out = torch.where(tissue.unsqueeze(1), out, x)
        return torch.where(valid[:, None, None], out, x)


class LegacyReinhardMask(LegacyReinhard):
    """Reinhard colour transfer on tissue pixels only; background pixels are left untouched.

    Takes the same arguments as :class:`Reinhard`; its fit measures the target's tissue.
    """

    method = "legacy_reinhard_mask"
    masked = True
