"""slideflow's Reinhard stain normalizers, batched in torch.

Reinhard et al., "Color transfer between images", IEEE CG&A 2001: shift and scale each CIE
L*a*b* channel of an image so that its mean and standard deviation match the target's::

    lab' = (lab - mean_image) * (std_target / std_image) + mean_target

The four classes reproduce slideflow 3.0.2's torch normalizers of the same names:

* ``reinhard_fast``: the transfer above. Means and standard deviations are taken over all
  pixels of each image; standard deviations are sample ones (``N - 1`` denominator).
* ``reinhard``: as ``reinhard_fast``, but every image (the fit target and each image to
  transform) is first brightness-standardised: scaled so that the 90th percentile of its
  values becomes 255, then truncated to uint8.
* ``reinhard_fast_mask`` / ``reinhard_mask``: as the unmasked variants, except that pixels
  whose L* is not below ``100 * threshold`` (93 by default) keep their input value (for
  ``reinhard_mask``, the brightness-standardised value). The statistics, in the fit and in the
  transform, still use every pixel; the masked variants share the unmasked ones' presets.

The L*a*b* conversion follows slideflow's (kornia's formulas, float32), which differs from
:mod:`histobag.norm.color` in where out-of-gamut values are clamped; results are truncated
(not rounded) to uint8, as slideflow's are.

Tissue rule (histobag's, not slideflow's): an image whose fraction of pixels with L* below
``100 * threshold`` is under ``min_tissue``, or with a flat L*a*b* channel (zero standard
deviation, where slideflow would divide by zero), is returned unchanged. ``min_tissue=0``
normalises every non-flat image, as slideflow does.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from histobag.errors import ConfigError, HistobagError
from histobag.norm.base import StainNormalizer
from histobag.norm.ops import device_table, lookup, min_pixels, standardize_brightness

# D65 reference white (2 degree observer) and the CIE L*a*b* constants slideflow uses.
_WHITE = (0.95047, 1.0, 1.08883)
_LAB_EPS = 0.008856
_LAB_KAPPA = 7.787
_LAB_F_EPS = 0.2068966
# Default tissue threshold on L* / 100 (slideflow's ``threshold`` of its masked variants).
_THRESHOLD = 0.93


# ------------------------------------------------------------------------------ colour
@device_table
def sf_srgb_table(device: torch.device) -> torch.Tensor:
    """Linear RGB of the 256 uint8 levels, computed with slideflow's float32 operations.

    Built on the device (as slideflow computes it there) once per device, then cached.
    """
    c = torch.arange(256, dtype=torch.float32, device=device) / 255
    return torch.where(c > 0.04045, torch.pow((c + 0.055) / 1.055, 2.4), c / 12.92)


@device_table
def sf_white(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The D65 white ``(3, 1)`` as a tensor, once per device and dtype.

    A tensor, not Python floats: dividing by a Python scalar may run as a multiplication by
    its reciprocal (CUDA does), which would change the results' last bits.
    """
    return torch.tensor(_WHITE, device=device, dtype=dtype)[:, None]


def sf_rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Convert uint8 sRGB ``(B, 3, N)`` images to CIE L*a*b* as slideflow's torch backend does.

    Args:
        rgb: uint8 tensor with the channels along dimension 1.

    Returns:
        float32 tensor of the same shape: L* in ``[0, 100]``, then a* and b*.
    """
    lin = lookup(sf_srgb_table(rgb.device), rgb)
    r, g, b = lin.unbind(1)
    x = 0.412453 * r + 0.357580 * g + 0.180423 * b
    y = 0.212671 * r + 0.715160 * g + 0.072169 * b
    z = 0.019334 * r + 0.119193 * g + 0.950227 * b
    xyz = torch.stack([x, y, z], dim=1)
    white = sf_white(xyz.device, xyz.dtype)
    xyz = torch.div(xyz, white)
    power = torch.pow(xyz.clamp(min=_LAB_EPS), 1 / 3.0)
    linear = _LAB_KAPPA * xyz + 4.0 / 29.0
    fx, fy, fz = torch.where(xyz > _LAB_EPS, power, linear).unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def sf_lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Convert CIE L*a*b* ``(B, 3, N)`` to sRGB as slideflow's torch backend does (no clipping).

    ``f(Z)`` is clamped at 0 before the inverse transfer (slideflow's out-of-gamut rule); the
    result may lie outside ``[0, 1]``.

    Args:
        lab: float tensor with L*, a*, b* along dimension 1.

    Returns:
        sRGB values, nominally in ``[0, 1]``, of the same shape and dtype.
    """
    el, ea, eb = lab.unbind(1)
    fy = (el + 16.0) / 116.0
    fx = (ea / 500.0) + fy
    fz = (fy - (eb / 200.0)).clamp(min=0.0)
    f = torch.stack([fx, fy, fz], dim=1)
    xyz = torch.where(f > _LAB_F_EPS, torch.pow(f, 3.0), (f - 4.0 / 29.0) / _LAB_KAPPA)
    white = sf_white(xyz.device, xyz.dtype)
    x, y, z = (xyz * white).unbind(1)
    r = 3.2404813432005266 * x + -1.5371515162713185 * y + -0.4985363261688878 * z
    g = -0.9692549499965682 * x + 1.8759900014898907 * y + 0.0415559265582928 * z
    b = 0.0556466391351772 * x + -0.2040413383665112 * y + 1.0573110696453443 * z
    lin = torch.stack([r, g, b], dim=1)
    threshold = 0.0031308
    return torch.where(
        lin > threshold,
        1.055 * torch.pow(lin.clamp(min=threshold), 1 / 2.4) - 0.055,
        12.92 * lin,
    )


def lab_mean_std(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and sample standard deviation (``N - 1``) of ``(B, 3, N)``.

    Returns:
        ``(means, stds)``, each ``(B, 3)``.
    """
    std, mean = torch.std_mean(lab, dim=-1, correction=1)
    return mean, std


# ---------------------------------------------------------------------------- classes
class ReinhardFast(StainNormalizer):
    """slideflow's ``reinhard_fast``: L*a*b* mean/std transfer, no brightness standardisation.

    The fit is ``{"means": [L, a, b], "stds": [L, a, b]}`` (slideflow's ``target_means`` and
    ``target_stds``); presets ``v1``, ``v2`` and ``v3`` (the default) are slideflow's.

    Args:
        fit: ``"default"`` (preset ``v3``), a preset name, a fit dictionary, target image(s),
            or ``None`` (unfitted).
        threshold: Pixels with ``L* / 100`` below it are tissue (slideflow's 0.93); the
            ``_mask`` variants normalise tissue pixels only.
        min_tissue: Images with a smaller fraction of tissue pixels (judged after brightness
            standardisation where the method applies it) are returned unchanged; ``0``
            normalises every image that has no flat channel, as slideflow does.
    """

    method = "reinhard_fast"
    fit_shapes: ClassVar[dict[str, tuple[int, ...]]] = {"means": (3,), "stds": (3,)}
    #: Whether images are brightness-standardised before fitting and transforming.
    standardize: ClassVar[bool] = False
    #: Whether pixels with L* >= 100 * threshold keep their (standardised) input value.
    masked: ClassVar[bool] = False

    def __init__(
        self, fit: Any = "default", *, threshold: float = _THRESHOLD, min_tissue: float = 0.01
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise HistobagError(f"threshold is an L*/100 value in (0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        super().__init__(fit, min_tissue=min_tissue)

    def _params(self) -> dict[str, Any]:
        return {"threshold": self.threshold, **super()._params()}

    def _check_fit(self, fit: dict[str, torch.Tensor]) -> None:
        if (fit["stds"] <= 0).any():
            raise ConfigError("fit['stds'] must be positive")

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return standardize_brightness(x) if self.standardize else x

    def _fit_pixels(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        mean, std = lab_mean_std(sf_rgb_to_lab(self._prepare(pixels)))
        if not (torch.isfinite(std).all() and (std > 0).all()):
            raise HistobagError(
                f"cannot fit {type(self).__name__}: the target has a flat L*a*b* channel "
                f"(standard deviations {std[0].tolist()})."
            )
        return {"means": mean[0], "stds": std[0]}

    def _transform(self, x: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        src = self._prepare(x)
        lab = sf_rgb_to_lab(src)
        tissue = (lab[:, 0] / 100) < self.threshold  # (B, N), as slideflow's mask
        mean, std = lab_mean_std(lab)
        scale = target["stds"] / std  # (B, 3)
        lab = (lab - mean[..., None]) * scale[..., None] + target["means"][:, None]
        out = torch.clip(sf_lab_to_rgb(lab) * 255, 0, 255).to(torch.uint8)
        if self.masked:
            out = torch.where(tissue[:, None], out, src)
        # min_tissue=0 drops the tissue rule entirely (slideflow's behaviour).
        need = min_pixels(x.shape[-1], self.min_tissue) if self.min_tissue > 0 else 0
        flat = ~((std > 0) & torch.isfinite(std)).all(-1)
        valid = (tissue.sum(-1) >= need) & ~flat
        return torch.where(valid[:, None, None], out, x)


class Reinhard(ReinhardFast):
    """slideflow's ``reinhard``: brightness standardisation, then L*a*b* mean/std transfer.

    Takes the same arguments as :class:`ReinhardFast`; its presets are slideflow's
    ``reinhard`` ones.
    """

    method = "reinhard"
    standardize = True


class ReinhardFastMask(ReinhardFast):
    """slideflow's ``reinhard_fast_mask``: ``reinhard_fast`` on pixels with L* below 93 only.

    Brighter pixels (background) keep their input value; statistics use all pixels, as in
    slideflow. ``threshold`` (default 0.93) is the L*/100 limit.
    """

    method = "reinhard_fast_mask"
    masked = True


class ReinhardMask(Reinhard):
    """slideflow's ``reinhard_mask``: ``reinhard`` on pixels with L* below 93 only.

    Brighter pixels keep their brightness-standardised value, as in slideflow; statistics use
    all pixels. ``threshold`` (default 0.93) is the L*/100 limit.
    """

    method = "reinhard_mask"
    masked = True
