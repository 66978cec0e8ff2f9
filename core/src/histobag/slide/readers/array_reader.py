"""What the readers of plain pixel arrays share (images, OME-TIFF, OME-Zarr): clipping a
region to its level, white beyond the edge, and turning gray / RGBA samples into RGB.

A subclass sets the :class:`~histobag.slide.readers.SlideReader` attributes and implements
:meth:`ArrayReader.read_window`, which reads a window that lies inside its level;
:meth:`ArrayReader.read_region` does the rest the same way for each of them.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np

from histobag.slide.readers.base import SlideReader

#: Largest mpp trusted from a dots-per-inch tag (PNG pHYs, JPEG JFIF, TIFF resolution): 20
#: µm/px is 1270 dpi. Image software stamps 72, 96, 150, 300 or 600 dpi by default (352.8 to
#: 42.3 µm/px), which says nothing about a slide; users pass ``WSI(..., mpp=)`` instead.
DPI_MPP_MAX = 20.0


#: Microns per unit of length, by the names OME-XML (symbols) and OME-Zarr (UDUNITS names) use.
_MICRONS_PER_UNIT = {
    "pm": 1e-6,
    "picometer": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "µm": 1.0,
    "μm": 1.0,  # Greek mu, as some writers spell it
    "um": 1.0,
    "micrometer": 1.0,
    "micron": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
}


def microns(value: float | str | None, unit: str | None) -> float | None:
    """``value`` in ``unit`` (a length unit's symbol or name) as micrometres; None when either
    is missing or unknown, or the value is not a positive number."""
    try:
        number = float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return None
    factor = _MICRONS_PER_UNIT.get(str(unit).strip().lower()) if unit else None
    if factor is None or not math.isfinite(number) or number <= 0:
        return None
    return number * factor


def level_downsamples(dimensions: list[tuple[int, int]]) -> tuple[float, ...]:
    """Downsample of each level from the sizes, as OpenSlide computes it (the mean of the
    width and height ratios), so both readers of one file agree."""
    width0, height0 = dimensions[0]
    return tuple((width0 / w + height0 / h) / 2 for w, h in dimensions)


def mpp_from_dpi(dots_per_inch: float | None) -> float | None:
    """Level-0 mpp from a resolution tag, or None when it is missing or a software default
    (see :data:`DPI_MPP_MAX`)."""
    if not dots_per_inch or not math.isfinite(dots_per_inch) or dots_per_inch <= 0:
        return None
    mpp = 25400.0 / dots_per_inch
    return mpp if mpp <= DPI_MPP_MAX else None


def to_rgb(samples: np.ndarray, *, min_is_white: bool = False) -> np.ndarray:
    """uint8 (h, w, 3) from uint8 (h, w), (h, w, 1), (h, w, 3) or (h, w, 4) samples; alpha is
    composited onto white, as OpenSlide's transparent pixels become white."""
    if samples.ndim == 2:
        samples = samples[..., None]
    if min_is_white:
        samples = 255 - samples
    channels = samples.shape[-1]
    if channels == 1:
        return np.repeat(samples, 3, axis=-1)
    if channels == 3:
        return samples
    rgb, alpha = samples[..., :3], samples[..., 3:4]
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


class ArrayReader(SlideReader):
    """A reader whose levels are arrays it can read windows of."""

    @abstractmethod
    def read_window(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """uint8 RGB ``(y1 - y0, x1 - x0, 3)`` of ``level``'s pixels ``[y0:y1, x0:x1]``; the
        window lies inside the level and is not empty."""

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Pixels of a region (level-0 ``location``, ``size`` in ``level`` pixels); pixels
        beyond the level's edge are white. A location between level pixels starts at the
        nearest level pixel (OpenSlide would interpolate there), so ``round(x * downsample)``
        reads level pixel ``x`` even when a level's downsample is not a whole number."""
        width, height = int(size[0]), int(size[1])
        downsample = self.level_downsamples[level]
        x = math.floor(location[0] / downsample + 0.5)
        y = math.floor(location[1] / downsample + 0.5)
        level_w, level_h = self.level_dimensions[level]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, level_w), min(y + height, level_h)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self.read_window(level, x0, y0, x1, y1)
        return out
