"""Read pyramid levels of plain tiled TIFF slides straight from their tiles.

For Aperio SVS and generic tiled TIFF, OpenSlide's pixels are exactly the decoded TIFF tiles,
but its ``read_region`` composites them through cairo into premultiplied ARGB: about 2 ms of CPU
per 224-pixel tile on top of decoding, which on a small machine competes with the model for the
same cores. :class:`TiledTiffLevels` finds the TIFF page behind each OpenSlide level, decodes
the tiles a region covers with tifffile (imagecodecs' codecs) and copies them into place:
the same pixels, roughly ten times less CPU. Anything it does not recognise (another vendor,
stripped pages, missing tiles, other sample layouts or codecs) is left to OpenSlide, and so is a
region whose tiles fail to decode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tifffile

from histobag.lru import LRUCache

__all__ = ["TiledTiffLevels"]

#: OpenSlide vendors whose level pixels are the TIFF page's tiles, unmodified.
_VENDORS = frozenset({"aperio", "generic-tiff"})
#: TIFF compressions decoded here: none, LZW, JPEG, Adobe deflate, deflate.
_COMPRESSIONS = frozenset({1, 5, 7, 8, 32946})
_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR = 2, 6
_JPEG = 7
_PLANAR_CONTIG = 1
#: Decoded tiles kept for the next regions: a 224-pixel grid row ends inside a 256-pixel TIFF
#: tile row, which the next grid row reads again (without the cache, about two decodes per
#: tile read instead of under one).
CACHE_BYTES = 64 * 2**20


class _Level:
    """Tile index of one tiled TIFF page."""

    def __init__(self, page) -> None:
        self.page = page
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tile_w, self.tile_h = int(page.tilewidth), int(page.tilelength)
        self.tiles_x = -(-self.width // self.tile_w)
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.counts = np.asarray(page.databytecounts, dtype=np.int64)
        self.jpegtables = page.jpegtables


def _usable(page) -> bool:
    return bool(
        page.is_tiled
        and page.tiledepth == 1
        and page.imagedepth == 1
        and int(page.compression) in _COMPRESSIONS
        and (
            int(page.photometric) == _PHOTOMETRIC_RGB
            # YCbCr only inside JPEG streams, which the JPEG decoder converts as OpenSlide's does
            or (int(page.photometric) == _PHOTOMETRIC_YCBCR and int(page.compression) == _JPEG)
        )
        and page.samplesperpixel == 3
        and page.bitspersample == 8
        and int(page.planarconfig) == _PLANAR_CONTIG
        and not page.extrasamples
        and len(page.dataoffsets)
        == -(-page.imagewidth // page.tilewidth) * -(-page.imagelength // page.tilelength)
        and min(page.databytecounts, default=0) > 0  # a missing tile reads as transparent
    )


class TiledTiffLevels:
    """The pyramid levels of a slide that can be read from their TIFF tiles directly.

    Args:
        path: The slide file.
        levels: OpenSlide's level dimensions, (width, height) per level.

    Attributes:
        levels: OpenSlide level number → tile index, for the levels read here.
    """

    def __init__(self, path: str | os.PathLike[str], levels: Sequence[tuple[int, int]]) -> None:
        self._cache: LRUCache[tuple[int, int], np.ndarray] = LRUCache(
            CACHE_BYTES, weigh=lambda tile: tile.nbytes
        )
        self._tif = tifffile.TiffFile(os.fspath(path))
        by_size = {}
        for page in self._tif.pages:
            if _usable(page):
                by_size.setdefault((int(page.imagewidth), int(page.imagelength)), page)
        self.levels = {
            i: _Level(by_size[tuple(dims)])
            for i, dims in enumerate(levels)
            if tuple(dims) in by_size
        }

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], vendor: str | None, levels: Sequence[tuple[int, int]]
    ) -> TiledTiffLevels | None:
        """The reader for ``path``, or ``None`` when OpenSlide should read every level."""
        if vendor not in _VENDORS:
            return None
        try:
            reader = cls(path, levels)
        except Exception:  # anything tifffile cannot parse stays with OpenSlide
            return None
        if not reader.levels:
            reader.close()
            return None
        return reader

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray | None:
        """uint8 (height, width, 3) of ``level`` from level pixel (x, y); ``None`` if that
        level is not read here. Pixels outside the image are white, as OpenSlide's transparent
        ones become."""
        info = self.levels.get(level)
        if info is None:
            return None
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        x1, y1 = min(x + width, info.width), min(y + height, info.height)
        x0, y0 = max(x, 0), max(y, 0)
        if x1 <= x0 or y1 <= y0:
            return out
        for ty in range(y0 // info.tile_h, (y1 - 1) // info.tile_h + 1):
            for tx in range(x0 // info.tile_w, (x1 - 1) // info.tile_w + 1):
                tile = self._tile(level, info, ty * info.tiles_x + tx)
                left, top = tx * info.tile_w, ty * info.tile_h
                ax0, ay0 = max(x0, left), max(y0, top)
                ax1, ay1 = min(x1, left + info.tile_w), min(y1, top + info.tile_h)
                out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = tile[
                    ay0 - top : ay1 - top, ax0 - left : ax1 - left, :3
                ]
        return out

    def _tile(self, level: int, info: _Level, index: int) -> np.ndarray:
        """Decoded tile ``index`` of ``level``, (tile_h, tile_w, samples), from the cache."""
        key = (level, index)
        tile = self._cache.get(key)
        if tile is not None:
            return tile
        handle = self._tif.filehandle
        handle.seek(int(info.offsets[index]))
        data = handle.read(int(info.counts[index]))
        tile = info.page.decode(data, index, jpegtables=info.jpegtables)[0]
        tile = tile.reshape(tile.shape[-3:])
        self._cache.put(key, tile)
        return tile

    def close(self) -> None:
        """Close the file and drop the cached tiles."""
        self._cache.clear()
        self._tif.close()
