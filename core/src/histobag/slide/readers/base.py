""":class:`SlideReader`: what histobag needs from a slide format's library.

A reader opens one slide (a local file, a folder such as OME-Zarr or DICOM, or a URL) and
answers a handful of questions: the pyramid's levels and their sizes, the level-0 resolution,
the scanner's properties, and the pixels of a region. :class:`histobag.WSI` does everything
else (tile grid, tissue, resizing) the same way for every reader, so tiles from two readers of
the same file are the same tiles.

A reader is never pickled: a :class:`~histobag.WSI` sent to a worker process reopens its slide
with the same reader there.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np


class SlideReader(ABC):
    """One open slide. Subclasses set the attributes in ``__init__`` and implement
    :meth:`read_region`; ``__init__(source)`` raises any exception when the slide cannot be
    opened (another reader is then tried).

    Attributes:
        source: The path or URL it was opened from.
        dimensions: Level-0 ``(width, height)`` in pixels.
        level_dimensions: ``(width, height)`` of each pyramid level, level 0 first.
        level_downsamples: Downsample of each level relative to level 0 (level 0: 1.0).
        mpp: Level-0 microns per pixel as the file records it (None: not recorded).
        magnification: Objective magnification as the file records it (None: not recorded).
        vendor: Scanner vendor or format, if known.
        properties: The file's metadata as strings (OpenSlide's property names where they
            exist, e.g. ``openslide.mpp-x``).
        version: Version of the library doing the reading (recorded with the bags).
    """

    source: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None = None
    magnification: float | None = None
    vendor: str | None = None
    properties: dict[str, str]
    version: str = ""

    @abstractmethod
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Pixels of a region: uint8 RGB ``(size[1], size[0], 3)``.

        Args:
            location: Level-0 ``(x, y)`` of the region's top-left corner (may lie outside
                the slide).
            level: Pyramid level to read from.
            size: ``(width, height)`` in pixels of that level.

        Pixels outside the slide or its scanned area are white (255, 255, 255), as
        OpenSlide composites its transparent pixels onto white.
        """

    def best_level_for_downsample(self, downsample: float) -> int:
        """The most downsampled level whose downsample does not exceed ``downsample``
        (OpenSlide's rule)."""
        best = 0
        for level, value in enumerate(self.level_downsamples):
            if value <= downsample:
                best = level
        return best

    def associated_images(self) -> dict[str, np.ndarray]:
        """Label, macro and thumbnail images the file holds, as uint8 RGB (may be empty)."""
        return {}

    def close(self) -> None:  # noqa: B027 - readers without a handle need nothing
        """Release the file handle (the reader is not used afterwards)."""

    def describe(self) -> dict[str, Any]:
        """What ``histobag slides`` lists: size, levels, mpp, magnification, vendor."""
        return {
            "dimensions": list(self.dimensions),
            "levels": len(self.level_dimensions),
            "mpp": self.mpp,
            "magnification": self.magnification,
            "vendor": self.vendor,
        }


def positive_number(value: Any) -> float | None:
    """Helper for readers: ``value`` (a number or its text) as a positive finite float, or
    None (for metadata such as a pixel size, which a scanner may leave empty or zero)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def read_inside_level(
    location: tuple[int, int],
    downsample: float,
    level_size: tuple[int, int],
    size: tuple[int, int],
    read: Callable[[int, int, int, int], np.ndarray],
) -> np.ndarray:
    """Helper for readers whose library refuses or pads regions beyond a level's edge.

    Returns the uint8 RGB region ``(size[1], size[0], 3)`` of a level from level-0
    ``location`` (taken down to the level pixel that holds it, as OpenSlide does), white
    beyond the level's edge; ``read(x0, y0, x1, y1)`` gives the level pixels
    ``[y0:y1, x0:x1]`` of the part inside, and is not called when nothing is inside.
    """
    width, height = int(size[0]), int(size[1])
    x = math.floor(location[0] / downsample)
    y = math.floor(location[1] / downsample)
    level_w, level_h = level_size
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, level_w), min(y + height, level_h)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = read(x0, y0, x1, y1)
    return out


def white_outside(
    region: np.ndarray, location: tuple[int, int], downsample: float, level_size: tuple[int, int]
) -> np.ndarray:
    """Helper for readers: a region array whose pixels beyond the level's edge are set white
    (readers that pad with black or clamp use it to match OpenSlide)."""
    x0 = location[0] / downsample
    y0 = location[1] / downsample
    width, height = level_size
    h, w = region.shape[:2]
    xs = np.floor(x0).astype(int) + np.arange(w)
    ys = np.floor(y0).astype(int) + np.arange(h)
    out = region.copy()
    out[:, (xs < 0) | (xs >= width)] = 255
    out[(ys < 0) | (ys >= height)] = 255
    return out
