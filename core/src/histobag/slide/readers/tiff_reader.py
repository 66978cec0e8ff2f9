"""TIFF read with tifffile: plain (stripped or tiled) TIFF images and OME-TIFF pyramids.

Two readers use it. ``image`` (:mod:`.image_reader`) opens ``.tif``/``.tiff`` files that
OpenSlide does not (stripped TIFF, for instance): one level, or the levels tifffile finds.
``ome-tiff`` (:class:`OmeTiffReader`) opens OME-TIFF before OpenSlide does, because OpenSlide
reads an OME-TIFF written by tifffile or bioformats as a one-level generic TIFF: it ignores the
pyramid stored in SubIFDs and the OME-XML's pixel size.

A region decodes only the tiles or strips it covers (kept in a small cache for the next
regions); uncompressed contiguous images are memory-mapped. Pages tifffile cannot decode by
segment (separate sample planes, subsampled YCbCr without JPEG) are decoded whole, once.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import tifffile

from histobag.errors import SlideOpenError
from histobag.lru import LRUCache
from histobag.slide.readers.array_reader import (
    ArrayReader,
    level_downsamples,
    microns,
    mpp_from_dpi,
    to_rgb,
)

__all__ = ["OmeTiffReader", "TiffReader"]

#: Decoded tiles or strips kept for the next regions (a grid row ends inside a tile row that
#: the next row reads again).
CACHE_BYTES = 64 * 2**20

_MINISWHITE, _MINISBLACK, _RGB, _YCBCR = 0, 1, 2, 6
_JPEG = 7
_CONTIG = 1
_INCH, _CENTIMETER = 2, 3


class _Level:
    """How to read one level's page: memory map, segments (tiles or strips), or whole."""

    def __init__(self, page: tifffile.TiffPage, path: Path) -> None:
        self.page = page
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.min_is_white = int(page.photometric) == _MINISWHITE
        self.memmap: np.ndarray | None = None
        self.whole: np.ndarray | None = None
        if page.is_tiled:
            self.seg_w, self.seg_h = int(page.tilewidth), int(page.tilelength)
        else:
            self.seg_w, self.seg_h = (
                self.width,
                min(int(page.rowsperstrip) or self.height, self.height),
            )
        self.across = -(-self.width // self.seg_w)
        down = -(-self.height // self.seg_h)
        self.by_segment = (
            int(page.planarconfig) == _CONTIG
            and page.imagedepth == 1
            and (not page.is_tiled or page.tiledepth == 1)
            and (int(page.photometric) != _YCBCR or int(page.compression) == _JPEG)
            and len(page.dataoffsets) == self.across * down
        )
        if page.is_contiguous and not page.is_tiled and self.by_segment:
            # uncompressed and contiguous: read rows straight from the file
            self.memmap = np.memmap(
                path,
                dtype=np.uint8,
                mode="r",
                offset=int(page.dataoffsets[0]),
                shape=(self.height, self.width, int(page.samplesperpixel)),
            )


def _check_page(page: tifffile.TiffPage, axes: str, path: Path) -> None:
    if axes not in ("YX", "YXS", "SYX"):
        raise SlideOpenError(
            f"Cannot read {path} as a slide: its image has axes {axes} (channels, planes or "
            "time points in separate pages), not one RGB or gray plane."
        )
    if np.dtype(page.dtype) != np.uint8 or int(page.samplesperpixel) not in (1, 3, 4):
        raise SlideOpenError(
            f"Cannot read {path} as a slide: it holds {page.samplesperpixel} samples of "
            f"{page.dtype} per pixel; bright-field slides are 8-bit RGB or gray. Convert it "
            "to 8-bit RGB first."
        )
    try:  # an unknown compression code fails only when decoding: refuse the file now
        tifffile.COMPRESSION(page.compression)
    except ValueError:
        raise SlideOpenError(
            f"Cannot read {path} as a slide: unsupported TIFF compression {int(page.compression)}."
        ) from None
    if int(page.photometric) not in (_MINISWHITE, _MINISBLACK, _RGB, _YCBCR):
        raise SlideOpenError(
            f"Cannot read {path} as a slide: photometric {page.photometric!s} (palette or "
            "another colour space) is not supported; convert it to RGB."
        )


def _ome_xml(tif: tifffile.TiffFile) -> ElementTree.Element | None:
    text = tif.ome_metadata if tif.is_ome else None
    if not text:
        return None
    try:
        return ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _ome_mpp_and_magnification(root: ElementTree.Element) -> tuple[float | None, float | None]:
    """The first image's pixel size (µm) and its objective's nominal magnification."""
    mpp = magnification = None
    for element in root.iter():
        name = _local(element.tag)
        if name == "Pixels" and mpp is None:
            mpp = microns(element.get("PhysicalSizeX"), element.get("PhysicalSizeXUnit", "µm"))
        elif name == "Objective" and magnification is None:
            try:
                magnification = float(element.get("NominalMagnification", "nan"))
            except ValueError:
                magnification = None
            if magnification is not None and not math.isfinite(magnification):
                magnification = None
    return mpp, magnification


def _resolution_mpp(page: tifffile.TiffPage) -> float | None:
    """The mpp the XResolution tag records, when its unit is an inch or a centimetre."""
    tag, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if tag is None or unit is None or int(unit.value) not in (_INCH, _CENTIMETER):
        return None
    numerator, denominator = tag.value
    if not denominator:
        return None
    per_unit = numerator / denominator
    return mpp_from_dpi(per_unit * (2.54 if int(unit.value) == _CENTIMETER else 1.0))


class TiffReader(ArrayReader):
    """A TIFF opened with tifffile: its first image and that image's pyramid levels.

    Args:
        source: Path of the ``.tif`` / ``.tiff`` file.
    """

    def __init__(self, source: str) -> None:
        path = Path(source)
        if not path.is_file():
            raise SlideOpenError(f"Slide file {path} does not exist. Check the path.")
        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises several kinds on a foreign file
            raise SlideOpenError(f"Cannot open {path} as a TIFF: {exc}.") from None
        try:
            self._open(tif, path)
        except Exception:
            tif.close()
            raise
        self._tif = tif
        self._cache: LRUCache[tuple[int, int], np.ndarray] = LRUCache(
            CACHE_BYTES, weigh=lambda a: a.nbytes
        )

    def _open(self, tif: tifffile.TiffFile, path: Path) -> None:
        if not tif.series:
            raise SlideOpenError(f"Cannot read {path} as a slide: the TIFF holds no image.")
        series = tif.series[0]
        levels = []
        for level in series.levels:
            page = level.keyframe
            _check_page(page, level.axes, path)
            levels.append(_Level(page, path))
        self._levels = levels
        self.source = str(path)
        self.level_dimensions = tuple((lv.width, lv.height) for lv in levels)
        self.dimensions = self.level_dimensions[0]
        self.level_downsamples = level_downsamples(list(self.level_dimensions))
        first = levels[0].page
        root = _ome_xml(tif)
        if root is not None:
            self.mpp, self.magnification = _ome_mpp_and_magnification(root)
        else:
            self.mpp, self.magnification = _resolution_mpp(first), None
        self.vendor = "ome-tiff" if root is not None else "tiff"
        self.version = tifffile.__version__
        self.properties = self._properties(first)

    def _properties(self, page: tifffile.TiffPage) -> dict[str, str]:
        properties = {"openslide.vendor": str(self.vendor)}
        properties["openslide.level-count"] = str(len(self.level_dimensions))
        for name in ("ImageDescription", "Software", "DateTime", "Make", "Model"):
            tag = page.tags.get(name)
            if tag is not None and isinstance(tag.value, str):
                properties[f"tiff.{name}"] = tag.value
        if self.mpp is not None:
            properties["openslide.mpp-x"] = properties["openslide.mpp-y"] = repr(self.mpp)
        if self.magnification is not None:
            properties["openslide.objective-power"] = repr(self.magnification)
        return properties

    def read_window(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The window's pixels, from the memory map, the segments it covers, or the page."""
        info = self._levels[level]
        if info.memmap is not None:
            return to_rgb(np.asarray(info.memmap[y0:y1, x0:x1]), min_is_white=info.min_is_white)
        if not info.by_segment:
            if info.whole is None:
                samples = info.page.asarray()
                if samples.ndim == 3 and int(info.page.planarconfig) != _CONTIG:
                    samples = np.moveaxis(samples, 0, -1)  # separate planes: (S, Y, X)
                info.whole = to_rgb(
                    samples.reshape(info.height, info.width, -1), min_is_white=info.min_is_white
                )
            return info.whole[y0:y1, x0:x1]
        out = np.full((y1 - y0, x1 - x0, 3), 255, dtype=np.uint8)
        for row in range(y0 // info.seg_h, (y1 - 1) // info.seg_h + 1):
            for col in range(x0 // info.seg_w, (x1 - 1) // info.seg_w + 1):
                segment = self._segment(level, info, row * info.across + col)
                if segment is None:  # a tile that was never written reads as white
                    continue
                left, top = col * info.seg_w, row * info.seg_h
                ax0, ay0 = max(x0, left), max(y0, top)
                ax1 = min(x1, left + info.seg_w, left + segment.shape[1])
                ay1 = min(y1, top + info.seg_h, top + segment.shape[0])
                out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = segment[
                    ay0 - top : ay1 - top, ax0 - left : ax1 - left
                ]
        return out

    def _segment(self, level: int, info: _Level, index: int) -> np.ndarray | None:
        """Decoded RGB tile or strip ``index`` of ``level`` (None: not written)."""
        key = (level, index)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        count = int(info.page.databytecounts[index])
        if count == 0:
            return None
        handle = self._tif.filehandle
        handle.seek(int(info.page.dataoffsets[index]))
        data = handle.read(count)
        decoded = info.page.decode(data, index, jpegtables=info.page.jpegtables)[0]
        if decoded is None:
            return None
        segment = to_rgb(decoded.reshape(decoded.shape[-3:]), min_is_white=info.min_is_white)
        self._cache.put(key, segment)
        return segment

    def close(self) -> None:
        """Close the file and drop the cached segments and memory maps."""
        self._cache.clear()
        for info in self._levels:
            info.memmap = info.whole = None
        self._tif.close()


class OmeTiffReader(TiffReader):
    """An OME-TIFF (``.ome.tif`` / ``.ome.tiff``): its pyramid from SubIFDs (or pages) and its
    pixel size and objective from the OME-XML. A file without OME-XML is refused, so the next
    reader (OpenSlide) opens it."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        if self.vendor != "ome-tiff":
            self.close()
            raise SlideOpenError(f"{source} is not an OME-TIFF: it holds no OME-XML.")
