"""Tile-grid geometry: pyramid levels, the level a tile is read from, and grid positions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Level", "best_level", "grid_starts", "read_size"]

# Downsamples are floats computed by OpenSlide from level sizes (e.g. 3.9999); this slack keeps
# a level whose tile would be tile_px minus rounding noise.
_EPS = 1e-3


@dataclass(frozen=True)
class Level:
    """One pyramid level of a slide.

    Attributes:
        index: Level number, 0 being full resolution.
        dimensions: (width, height) in pixels at this level.
        downsample: Level-0 pixels per pixel of this level.
    """

    index: int
    dimensions: tuple[int, int]
    downsample: float


def best_level(levels: list[Level], extent: int, tile_px: int) -> int:
    """Pick the lowest-resolution level on which a tile still has at least ``tile_px`` pixels.

    Args:
        levels: The slide's pyramid levels.
        extent: Tile side in level-0 pixels.
        tile_px: Tile side wanted after resizing.

    Returns:
        The level index; level 0 if no level has enough pixels (the tile is then upsampled).
    """
    best = 0
    for level in levels:
        enough = extent / level.downsample + _EPS >= tile_px
        if enough and level.downsample > levels[best].downsample:
            best = level.index
    return best


def read_size(extent: int, downsample: float) -> int:
    """Side in pixels of the region read on a level to cover ``extent`` level-0 pixels."""
    return max(1, round(extent / downsample))


def grid_starts(length: int, extent: int, stride: int, edge_tiles: bool) -> np.ndarray:
    """Level-0 start positions of tiles along one axis.

    Without edge tiles only tiles lying wholly inside ``[0, length)`` are kept; with them,
    every start inside the slide is kept and the part beyond the edge reads as white.

    Returns:
        int64 array of starts: ``0, stride, 2 * stride, ...``.
    """
    if edge_tiles:
        return np.arange(0, length, stride, dtype=np.int64)
    if length < extent:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, length - extent + 1, stride, dtype=np.int64)
