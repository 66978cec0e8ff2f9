"""Tile readers for the engine: picklable openers for slides and TFRecords.

A tile reader has ``len()`` and ``read_tiles(indices)`` (the engine's
:class:`~histobag.engine.TileReader`). An opener runs inside each worker process and returns
``(reader, top_left, geometry)``; the engine never ships pixels or open file handles between
processes.

An opener may also have ``plan()``: the engine calls it once per slide in the main process and
sends the opener it returns to the workers instead. :class:`OpenWSI` plans by building the
:class:`~histobag.slide.WSI` (thumbnail and tissue detection: once per slide, not once per
worker) and sends it without its file handle, so each worker only reopens the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histobag.geometry import TileGeometry, centres_to_top_left, evenly_spaced
from histobag.io.tfrecord import TFRecordReader
from histobag.slide import WSI


def wsi_geometry(wsi: Any) -> TileGeometry:
    """Tile geometry of a :class:`~histobag.slide.WSI`."""
    return TileGeometry(
        tile_px=int(wsi.tile_px),
        tile_um=float(wsi.tile_microns),
        extent_px=int(wsi.full_extract_px),
        mpp=float(wsi.mpp),
        level=int(wsi.level),
        reader=f"{wsi.reader_name} {wsi.reader_version}".strip(),
    )


@dataclass(frozen=True)
class OpenWSI:
    """Open a slide file with the given tiling settings (keyword arguments of ``WSI``)."""

    path: str
    tile_px: int
    tile_um: float | str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> tuple[Any, np.ndarray, TileGeometry]:
        """Open the slide: (WSI, top-left corners, geometry)."""
        wsi = WSI(self.path, self.tile_px, self.tile_um, **self.kwargs)
        return wsi, wsi.coords, wsi_geometry(wsi)

    def plan(self) -> ExistingWSI:
        """Build the slide's grid once (tissue detection included), for the workers to read."""
        wsi = WSI(self.path, self.tile_px, self.tile_um, **self.kwargs)
        wsi.close()  # each worker reopens the file; the main process reads no tiles
        return ExistingWSI(wsi)


@dataclass(frozen=True)
class ExistingWSI:
    """Use a WSI the caller already built (it pickles without its file handle)."""

    wsi: Any

    def __call__(self) -> tuple[Any, np.ndarray, TileGeometry]:
        """The WSI, its top-left corners and geometry."""
        return self.wsi, self.wsi.coords, wsi_geometry(self.wsi)


class TFRecordTileReader:
    """A TFRecord as a tile source: every record is kept (tiles were filtered when written).

    Opening reads and verifies the whole file (:class:`~histobag.io.tfrecord.TFRecordReader`):
    a corrupted or truncated file, or one that disagrees with its index, raises
    :class:`~histobag.errors.TFRecordError` naming the file before any tile is read.
    """

    def __init__(self, path: str | Path) -> None:
        """Open and verify the TFRecord at ``path``."""
        self.reader = TFRecordReader(path)

    def __len__(self) -> int:
        return len(self.reader)

    def read_tiles(self, indices: Any, *, return_mask: bool = False) -> Any:
        """Decoded tiles, and an all-True mask."""
        tiles = self.reader.read_tiles(indices)
        return (tiles, np.ones(len(tiles), dtype=bool)) if return_mask else tiles

    def close(self) -> None:
        """Close the file."""
        self.reader.close()


@dataclass(frozen=True)
class OpenTFRecord:
    """Open a TFRecord of tiles. ``extent_px`` (level-0 tile size) converts the stored tile
    centres to top-left corners; 0 when unknown, in which case coordinates stay centres.

    The centres are the records' own ``loc_x``/``loc_y``, read when the file is opened; the
    index beside it is only checked against them, never trusted.
    """

    path: str
    tile_px: int = 0
    tile_um: float = 0.0
    extent_px: int = 0
    mpp: float | None = None

    def __call__(self) -> tuple[Any, np.ndarray, TileGeometry]:
        """Open the TFRecord: (tiles, top-left corners or centres, geometry)."""
        source = TFRecordTileReader(self.path)
        top_left = centres_to_top_left(source.reader.locations, self.extent_px)
        geometry = TileGeometry(self.tile_px, self.tile_um, self.extent_px, self.mpp)
        return source, top_left, geometry


class _Subset:
    """A tile source restricted to some of its tiles."""

    def __init__(self, source: Any, indices: np.ndarray) -> None:
        self.source = source
        self.indices = indices
        grid_index = getattr(source, "grid_index", None)
        self.grid_index = None if grid_index is None else grid_index[indices]

    def __len__(self) -> int:
        return len(self.indices)

    def read_tiles(self, idx: Any, *, return_mask: bool = False) -> Any:
        return self.source.read_tiles(self.indices[np.asarray(idx)], return_mask=return_mask)

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class Subsample:
    """Wrap an opener to keep at most ``max_tiles`` tiles, evenly spaced (deterministic)."""

    opener: Any
    max_tiles: int

    def plan(self) -> Subsample:
        """The same subsample of the wrapped opener's plan (see :func:`plan_opener`)."""
        return Subsample(plan_opener(self.opener), self.max_tiles)

    def __call__(self) -> tuple[Any, np.ndarray, Any]:
        """Open the wrapped reader and keep at most ``max_tiles`` of its tiles."""
        source, top_left, geometry = self.opener()
        n = len(source)
        if n <= self.max_tiles:
            return source, top_left, geometry
        indices = evenly_spaced(n, self.max_tiles)
        return _Subset(source, indices), np.asarray(top_left)[indices], geometry


def plan_opener(opener: Any) -> Any:
    """What the workers should call to open a slide: ``opener.plan()`` where the opener has
    one (work done once, in the calling process), else the opener itself."""
    plan = getattr(opener, "plan", None)
    return plan() if callable(plan) else opener
