"""The ``czi`` reader: Zeiss CZI slides, with pylibCZIrw (Zeiss's libCZI).

A CZI slide is a mosaic of subblocks (tiles) placed in a plane whose coordinates may start
anywhere, even below zero; level-0 ``(0, 0)`` is the top-left corner of the bounding box of
the level-0 subblocks. Areas no subblock covers (between scanned regions) are white.

libCZI reads any region at a zoom (``read(roi=..., zoom=...)``), from the file's pyramid
subblocks where it has them and by nearest-neighbour sampling of finer ones where it does
not, so the levels are virtual: downsamples 1, 2, 4, ... until the next level's longer side
would be under :data:`SMALLEST_LEVEL_PX`. Level-0 mpp is the ``Scaling`` metadata's pixel
size (stored in metres); the magnification is the first objective's nominal magnification.
Bright-field slides only: one channel of ``Bgr24`` or ``Gray8`` pixels, the first ``Z``/``T``
plane.

pylibCZIrw (LGPL-3.0) is an optional extra: ``pip install "histobag[czi]"``.
"""

from __future__ import annotations

import contextlib
import math
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from histobag.errors import SlideOpenError
from histobag.optional import require
from histobag.slide.readers.array_reader import ArrayReader
from histobag.slide.readers.base import positive_number

__all__ = ["SMALLEST_LEVEL_PX", "CziReader", "is_czi_file"]

#: Every CZI file starts with the ``ZISRAWFILE`` segment.
_MAGIC = b"ZISRAWFILE"

#: The levels stop where the next one's longer side would be under this many pixels.
SMALLEST_LEVEL_PX = 512

#: Pixel types of bright-field slides (others are fluorescence or 16-bit data).
_BRIGHTFIELD = ("Bgr24", "Gray8")

#: A CZI pixel size above this many metres (1 mm) is not a slide's: left unrecorded.
_MAX_PIXEL_METRES = 1e-3


def is_czi_file(path: str | Path) -> bool:
    """Whether ``path`` is a CZI file (read from its first bytes)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def _as_list(value: Any) -> list[Any]:
    """Always a list (xmltodict gives one element as a dict and several as a list)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _number(value: Any) -> float | None:
    """A positive finite float, or None."""
    if isinstance(value, dict):  # an element with attributes: its text
        value = value.get("#text")
    return positive_number(value)


def _pixel_size_um(metadata: dict[str, Any]) -> tuple[float | None, float | None]:
    """Level-0 ``(x, y)`` pixel size in µm from ``Scaling/Items/Distance`` (in metres)."""
    items = (metadata.get("Scaling") or {}).get("Items") or {}
    sizes: dict[str, float | None] = {"X": None, "Y": None}
    for distance in _as_list(items.get("Distance")):
        axis = str(distance.get("@Id", "")).upper() if isinstance(distance, dict) else ""
        metres = _number(distance.get("Value")) if axis in sizes else None
        if metres is not None and metres <= _MAX_PIXEL_METRES:
            sizes[axis] = metres * 1e6
    return sizes["X"], sizes["Y"]


def _magnification(metadata: dict[str, Any]) -> float | None:
    """The first objective's ``NominalMagnification`` (None when none is recorded)."""
    instrument = (metadata.get("Information") or {}).get("Instrument") or {}
    for objective in _as_list((instrument.get("Objectives") or {}).get("Objective")):
        if isinstance(objective, dict):
            value = _number(objective.get("NominalMagnification"))
            if value is not None:
                return value
    return None


def _levels(width: int, height: int) -> tuple[tuple[int, int], ...]:
    """Sizes of the levels at downsamples 1, 2, 4, ... (each rounded up: a last partial
    pixel is kept, white beyond the slide)."""
    sizes = [(width, height)]
    while True:
        factor = 2 ** len(sizes)
        size = (math.ceil(width / factor), math.ceil(height / factor))
        if max(size) < SMALLEST_LEVEL_PX:
            return tuple(sizes)
        sizes.append(size)


class CziReader(ArrayReader):
    """A Zeiss CZI slide read with pylibCZIrw.

    Args:
        source: Path of the ``.czi`` file.
    """

    def __init__(self, source: str) -> None:
        czi = require("pylibCZIrw.czi", extra="czi", purpose="The czi slide reader")
        if not Path(source).is_file():
            raise SlideOpenError(f"CZI file {source} does not exist. Check the path.")
        if not is_czi_file(source):
            raise SlideOpenError(f"Cannot open {source} as CZI: it is not a CZI file.")
        self._files = contextlib.ExitStack()
        try:
            self._czi = self._files.enter_context(czi.open_czi(source))
            self._check(source)
            box = self._czi.total_bounding_rectangle_no_pyramid
            metadata = (self._czi.metadata.get("ImageDocument") or {}).get("Metadata") or {}
        except SlideOpenError:
            self._files.close()
            raise
        except Exception as exc:  # libCZI raises several kinds on a damaged file
            self._files.close()
            raise SlideOpenError(
                f"Cannot open {source} as CZI: {type(exc).__name__}: {exc}."
            ) from None
        self._origin = (int(box.x), int(box.y))
        self.source = source
        self.dimensions = (int(box.w), int(box.h))
        self.level_dimensions = _levels(*self.dimensions)
        self.level_downsamples = tuple(
            float(2**level) for level in range(len(self.level_dimensions))
        )
        mpp_x, mpp_y = _pixel_size_um(metadata)
        self.mpp = mpp_x
        self.magnification = _magnification(metadata)
        self.vendor = "zeiss"
        self.version = _version()
        self.properties = {
            "openslide.vendor": "zeiss",
            "openslide.level-count": str(len(self.level_dimensions)),
            "czi.bounding-box": f"{box.x},{box.y},{box.w},{box.h}",
            "czi.pixel-type": self._czi.get_channel_pixel_type(0),
        }
        if mpp_x is not None:
            self.properties["openslide.mpp-x"] = repr(mpp_x)
            self.properties["openslide.mpp-y"] = repr(mpp_y if mpp_y else mpp_x)
        if self.magnification is not None:
            self.properties["openslide.objective-power"] = repr(self.magnification)

    def _check(self, source: str) -> None:
        """Refuse what is not one bright-field plane (fluorescence channels, 16-bit data)."""
        channels = self._czi.total_bounding_box.get("C", (0, 1))
        pixel_type = self._czi.get_channel_pixel_type(0)
        if channels[1] - channels[0] > 1 or pixel_type not in _BRIGHTFIELD:
            raise SlideOpenError(
                f"Cannot read {source} as a slide: it holds {channels[1] - channels[0]} "
                f"channel(s) of {pixel_type}; bright-field slides are one Bgr24 or Gray8 "
                "channel."
            )

    def read_window(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The window's pixels, read by libCZI at the level's zoom (white where no subblock
        lies)."""
        factor = 2**level
        roi = (
            self._origin[0] + x0 * factor,
            self._origin[1] + y0 * factor,
            (x1 - x0) * factor,
            (y1 - y0) * factor,
        )
        bgr = self._czi.read(
            roi=roi, zoom=1.0 / factor, pixel_type="Bgr24", background_pixel=(1.0, 1.0, 1.0)
        )
        window = np.full((y1 - y0, x1 - x0, 3), 255, dtype=np.uint8)
        # libCZI rounds the zoomed size; a whole multiple of the factor comes back exact.
        h, w = min(bgr.shape[0], y1 - y0), min(bgr.shape[1], x1 - x0)
        window[:h, :w] = bgr[:h, :w, ::-1]
        return window

    def close(self) -> None:
        """Close the file."""
        self._files.close()


def _version() -> str:
    """The version of pylibCZIrw (recorded with the bags)."""
    try:
        return version("pylibCZIrw")
    except PackageNotFoundError:
        return ""
