"""sRGB <-> CIE L*a*b* conversion in torch (D65 white, 2 degree observer).

Uses the same constants as ``skimage.color.rgb2lab``/``lab2rgb`` (the sRGB specification's
RGB-to-XYZ matrix and the CIE 1976 L*a*b* definition with its linear segment near black), so
results agree with scikit-image to float32 precision. L* is in ``[0, 100]``.
"""

from __future__ import annotations

import torch

from histobag.norm.ops import device_table, lookup

# sRGB (linear) -> CIE XYZ, D65 (IEC 61966-2-1).
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_RGB_FROM_XYZ = tuple(
    tuple(row)
    for row in torch.linalg.inv(torch.tensor(_XYZ_FROM_RGB, dtype=torch.float64)).tolist()
)
# Reference white D65, 2 degree observer.
_WHITE = (0.95047, 1.0, 1.08883)
# CIE constants: f(t) = t^(1/3) above (6/29)^3, else a linear segment.
_EPS = 0.008856
_KAPPA = 7.787
_F_EPS = 0.2068966  # f(_EPS) = 6/29


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c > 0.04045, ((c.clamp(min=0) + 0.055) / 1.055) ** 2.4, c / 12.92)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(0.0, 1.0)
    return torch.where(c > 0.0031308, 1.055 * c ** (1 / 2.4) - 0.055, c * 12.92)


def _mix(m: tuple[tuple[float, ...], ...], x: torch.Tensor, dim: int) -> list[torch.Tensor]:
    # A 3x3 matrix applied along `dim` as explicit sums (bit-identical for any batch size).
    ch = x.unbind(dim)
    return [m[i][0] * ch[0] + m[i][1] * ch[1] + m[i][2] * ch[2] for i in range(3)]


@device_table
def srgb_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Linear RGB of the 256 uint8 levels, built once per device and dtype (no per-batch copy)."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    return _srgb_to_linear(levels).to(device=device, dtype=dtype)


def rgb_to_lab(rgb: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Convert sRGB images to CIE L*a*b*.

    Args:
        rgb: uint8 values in ``[0, 255]``, or floating values in ``[0, 1]``, with the three
            channels along ``dim``.
        dim: The channel dimension (``-3`` for ``(..., 3, H, W)``, ``-1`` for ``(..., 3)``).

    Returns:
        A float tensor (float32 for uint8 input, else the input's dtype) of the same shape:
        L* in ``[0, 100]``, a* and b* roughly in ``[-128, 127]``.
    """
    if rgb.shape[dim] != 3:
        raise ValueError(f"expected 3 channels along dim {dim}, got shape {tuple(rgb.shape)}")
    if rgb.dtype == torch.uint8:
        lin = lookup(srgb_table(rgb.device, torch.float32), rgb)
    else:
        lin = _srgb_to_linear(rgb)
    x, y, z = _mix(_XYZ_FROM_RGB, lin, dim)
    fx, fy, fz = (_f(t / w) for t, w in zip((x, y, z), _WHITE))
    lab = (116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz))
    return torch.stack(lab, dim=dim)


def lab_to_rgb(lab: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Convert CIE L*a*b* to sRGB in ``[0, 1]`` (out-of-gamut colours are clipped).

    Args:
        lab: Floating tensor with L*, a*, b* along ``dim``.
        dim: The channel dimension.

    Returns:
        A tensor of the same shape and dtype with sRGB values in ``[0, 1]``.
    """
    if lab.shape[dim] != 3:
        raise ValueError(f"expected 3 channels along dim {dim}, got shape {tuple(lab.shape)}")
    el, ea, eb = lab.unbind(dim)
    fy = (el + 16.0) / 116.0
    fx = fy + ea / 500.0
    fz = fy - eb / 200.0
    x, y, z = (_finv(f) * w for f, w in zip((fx, fy, fz), _WHITE))
    z = z.clamp(min=0.0)  # as scikit-image: very blue-yellow colours can give z < 0
    lin = torch.stack(_mix(_RGB_FROM_XYZ, torch.stack((x, y, z), dim=dim), dim), dim=dim)
    return _linear_to_srgb(lin)


def _f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _EPS, t.clamp(min=_EPS) ** (1.0 / 3.0), _KAPPA * t + 16.0 / 116.0)


def _finv(f: torch.Tensor) -> torch.Tensor:
    return torch.where(f > _F_EPS, f**3, (f - 16.0 / 116.0) / _KAPPA)
