"""Tile geometry and the coordinate conventions bags and TFRecords use.

histobag's own convention is the level-0 pixel coordinate of a tile's top-left corner; slideflow
stores tile centres (``.index.npz``, TFRecord ``loc_x``/``loc_y``). :class:`TileGeometry` says how
big a slide's tiles are, which the conversions need.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: The two coordinate conventions a bag file may store.
COORDINATE_CONVENTIONS = ("top_left", "centre")


@dataclass(frozen=True)
class TileGeometry:
    """Where a slide's tiles are and how big they are.

    Attributes:
        tile_px: Tile side in pixels, as fed to the extractor.
        tile_um: Tile side in microns.
        extent_px: Tile side in level-0 pixels.
        mpp: Microns per level-0 pixel (None when unknown, e.g. a TFRecord without its slide).
        level: Pyramid level the tiles were read from (0 when unknown).
        reader: The slide reader and its library's version, e.g. ``"openslide 4.0.1"``
            (empty when unknown, e.g. a TFRecord).
    """

    tile_px: int
    tile_um: float
    extent_px: int
    mpp: float | None = None
    level: int = 0
    reader: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def centres_to_top_left(centres: np.ndarray, extent_px: int) -> np.ndarray:
    """Level-0 tile centres → top-left corners (slideflow stores centres)."""
    return np.asarray(centres, dtype=np.int64) - extent_px // 2


def top_left_to_centres(top_left: np.ndarray, extent_px: int) -> np.ndarray:
    """Level-0 top-left corners → tile centres."""
    return np.asarray(top_left, dtype=np.int64) + extent_px // 2


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """Indices of at most ``k`` of ``n`` items, evenly spaced from the first to the last.

    Deterministic and sorted; all ``n`` indices when ``n <= k``. Used wherever a slide's tiles
    (or a cohort's slides) are subsampled, so every subsample in histobag is the same one.
    """
    if n <= k:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def grid_pitch(coords: np.ndarray) -> int | None:
    """Level-0 step of a tile grid from its tiles' coordinates: the greatest common divisor
    of their offsets on both axes (None for fewer than two distinct positions).

    Equals the tile's level-0 side for histobag's (non-overlapping) grids; the stride when
    tiles overlap. Works for corners and centres alike.
    """
    xy = np.rint(np.asarray(coords, dtype=np.float64)).astype(np.int64).reshape(-1, 2)
    if not len(xy):
        return None
    offsets = (xy - xy.min(axis=0)).ravel()
    pitch = int(np.gcd.reduce(offsets))
    return pitch or None
