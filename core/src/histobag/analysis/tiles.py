"""Where mosaic tile images come from: slides (by coordinates), TFRecords, or memory.

A :class:`TileImageSource` answers ``read(slide, x, y)`` with a uint8 (H, W, 3) tile or None
when it cannot. ``x, y`` are level-0 tile coordinates in the source's ``coordinates``
convention (``"top_left"``, or ``"centre"`` as slideflow's ``.index.npz`` bags store them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from histobag.errors import HistobagError
from histobag.io.tfrecord import TFRecordReader
from histobag.lru import LRUCache
from histobag.naming import safe_name
from histobag.slide import WSI

__all__ = [
    "ArrayTileSource",
    "SlideTileSource",
    "TFRecordTileSource",
    "TileImageSource",
    "tile_source_for",
]


class TileImageSource(Protocol):
    """Reads one tile image by slide and level-0 location."""

    def read(self, slide: str, x: int, y: int) -> np.ndarray | None:
        """uint8 (H, W, 3), or None when the tile is not available."""


#: Slides or TFRecords a tile source keeps open (least recently used closed first).
OPEN_FILES = 4


class SlideTileSource:
    """Tiles read straight from the slides with :meth:`histobag.WSI.read_tile_at`.

    Args:
        slides: slide name → slide file.
        tile_px: Tile side in pixels.
        tile_um: Tile side in microns (or a magnification).
        coordinates: Convention of the locations passed to :meth:`read`.
        mpp: Level-0 microns per pixel for slides that do not record it.
    """

    def __init__(
        self,
        slides: Mapping[str, str | os.PathLike[str]],
        tile_px: int,
        tile_um: float | str,
        *,
        coordinates: str = "top_left",
        mpp: float | None = None,
    ) -> None:
        self.slides = {str(k): Path(v) for k, v in slides.items()}
        self.tile_px = int(tile_px)
        self.tile_um = tile_um
        self.coordinates = coordinates
        self.mpp = mpp
        self._open: LRUCache[str, WSI] = LRUCache(OPEN_FILES, on_evict=lambda wsi: wsi.close())

    def _wsi(self, slide: str) -> WSI:
        return WSI(self.slides[slide], self.tile_px, self.tile_um, tissue=None, mpp=self.mpp)

    def read(self, slide: str, x: int, y: int) -> np.ndarray | None:
        """The tile at (x, y) of ``slide``, or None if the slide is unknown or unreadable."""
        if slide not in self.slides:
            return None
        try:
            wsi = self._open.get_or_make(slide, lambda: self._wsi(slide))
            if self.coordinates == "centre":
                x, y = x - wsi.full_extract_px // 2, y - wsi.full_extract_px // 2
            return wsi.read_tile_at(int(x), int(y))
        except HistobagError:
            return None


#: An open TFRecord: its reader, location -> record index, and the grid step.
_Indexed = tuple[TFRecordReader, dict[tuple[int, int], int], int]


class TFRecordTileSource:
    """Tiles from slideflow-style TFRecords (one per slide), matched by location.

    TFRecords store tile centres. Top-left locations are converted with ``extent_px`` (the
    level-0 tile side) when given, else with the grid step inferred from the record
    locations (exact for tiles extracted without overlap); failing an exact match, the
    nearest record within one tile is used.

    Args:
        tfrecords: slide name → ``.tfrecords`` file.
        coordinates: Convention of the locations passed to :meth:`read`.
        extent_px: Level-0 tile side, to convert top-left corners to centres.
    """

    def __init__(
        self,
        tfrecords: Mapping[str, str | os.PathLike[str]],
        *,
        coordinates: str = "top_left",
        extent_px: int | None = None,
    ) -> None:
        self.tfrecords = {str(k): Path(v) for k, v in tfrecords.items()}
        self.coordinates = coordinates
        self.extent_px = extent_px
        self._open: LRUCache[str, _Indexed] = LRUCache(
            OPEN_FILES, on_evict=lambda opened: opened[0].close()
        )

    def _reader(self, slide: str) -> _Indexed:
        reader = TFRecordReader(self.tfrecords[slide])
        locs = np.asarray(reader.locations, np.int64).reshape(-1, 2)
        lookup = {(int(a), int(b)): i for i, (a, b) in enumerate(locs)}
        step = self.extent_px or _grid_step(locs)
        return reader, lookup, step

    def read(self, slide: str, x: int, y: int) -> np.ndarray | None:
        """The record whose tile is at (x, y), decoded, or None."""
        if slide not in self.tfrecords:
            return None
        reader, lookup, step = self._open.get_or_make(slide, lambda: self._reader(slide))
        cx, cy = (x, y) if self.coordinates == "centre" else (x + step // 2, y + step // 2)
        index = lookup.get((int(cx), int(cy)))
        if index is None and len(reader):
            locs = reader.locations
            d = np.abs(locs[:, 0] - cx) + np.abs(locs[:, 1] - cy)
            best = int(np.argmin(d))
            index = best if d[best] <= max(step, 1) else None
        if index is None:
            return None
        return reader.read_tiles([index])[0]


def _grid_step(locs: np.ndarray) -> int:
    """Smallest positive spacing between record locations (the extraction stride)."""
    steps = [np.diff(np.unique(locs[:, k])) for k in (0, 1) if len(locs)]
    positive = np.concatenate(steps) if steps else np.zeros(0)
    positive = positive[positive > 0]
    return int(positive.min()) if len(positive) else 0


class ArrayTileSource:
    """Tiles held in memory: ``{(slide, x, y): uint8 (H, W, 3)}`` (tests, synthetic data)."""

    def __init__(self, tiles: Mapping[tuple[str, int, int], np.ndarray]) -> None:
        self.tiles = {(str(s), int(x), int(y)): t for (s, x, y), t in tiles.items()}

    def read(self, slide: str, x: int, y: int) -> np.ndarray | None:
        """The stored tile, or None."""
        return self.tiles.get((str(slide), int(x), int(y)))


def tile_source_for(
    dataset: Any,
    *,
    coordinates: str = "top_left",
    tile_px: int | None = None,
    tile_um: float | str | None = None,
    prefer: str = "tfrecords",
) -> TileImageSource:
    """A tile source for a :class:`histobag.Dataset`: its TFRecords when every slide has
    one (``prefer="tfrecords"``), else its slide files.

    ``tile_px``/``tile_um`` default to the dataset's (pass a bags folder's when the dataset
    has none).
    """
    tile_px = tile_px or dataset.tile_px
    tile_um = tile_um or dataset.tile_um
    tfrecords = {Path(p).stem: p for p in dataset.tfrecords()} if dataset.tfrecords_dir else {}
    slides = {name: None for name in dataset.slides()}
    by_safe = {safe_name(n): n for n in slides}
    if prefer == "tfrecords" and tfrecords and set(by_safe) <= set(tfrecords):
        return TFRecordTileSource({s: tfrecords[s] for s in by_safe}, coordinates=coordinates)
    if tile_px is None or tile_um is None:
        raise HistobagError("Reading tiles from slides needs tile_px and tile_um.")
    paths = {Path(p).stem: p for p in dataset.slide_paths()}
    files = {safe_name(name): paths[name] for name in slides if name in paths}
    return SlideTileSource(files, int(tile_px), tile_um, coordinates=coordinates)
