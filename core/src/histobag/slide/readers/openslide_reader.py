"""The default reader: OpenSlide (SVS, NDPI, MRXS, SCN, BIF, pyramidal TIFF, DICOM, ...).

Levels of plain tiled TIFF slides are decoded from their tiles directly (:mod:`..tiff_tiles`):
the same pixels for a tenth of the CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from histobag.errors import SlideOpenError
from histobag.slide.readers.base import SlideReader
from histobag.slide.tiff_tiles import TiledTiffLevels


def rgba_to_rgb(region: Image.Image | np.ndarray) -> np.ndarray:
    """Composite an RGBA region onto white and return uint8 (H, W, 3).

    OpenSlide returns transparent pixels outside scanned areas and beyond the slide's edge;
    they become white. Fully opaque pixels are returned unchanged.
    """
    opaque = (
        isinstance(region, Image.Image)
        and region.mode == "RGBA"
        and region.getchannel("A").getextrema() == (255, 255)
    )
    if opaque:  # PIL's C conversion is the fastest path
        return np.asarray(region.convert("RGB"))
    arr = np.asarray(region)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return arr
    rgb, alpha = arr[..., :3], arr[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    blended = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return blended.astype(np.uint8)


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return None if math.isnan(number) else number


class OpenSlideReader(SlideReader):
    """A slide opened with OpenSlide (and its tiled-TIFF levels decoded directly)."""

    def __init__(self, source: str) -> None:
        path = Path(source)
        if not path.is_file():
            raise SlideOpenError(f"Slide file {path} does not exist. Check the path.")
        try:
            self._osr = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideOpenError(
                f"Cannot open slide {path}: OpenSlide does not recognise its format. Use a "
                "format OpenSlide supports (SVS, NDPI, MRXS, SCN, pyramidal TIFF, DICOM, ...)."
            ) from None
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideOpenError(
                f"Cannot open slide {path}: {exc}. The file is corrupt or uses an encoding "
                "OpenSlide cannot decode; re-export it from the scanner software or exclude it."
            ) from None
        osr = self._osr
        self.source = source
        self.properties = dict(osr.properties)
        self.vendor = self.properties.get(openslide.PROPERTY_NAME_VENDOR)
        self.dimensions = tuple(osr.dimensions)  # type: ignore[assignment]
        self.level_dimensions = tuple(tuple(d) for d in osr.level_dimensions)  # type: ignore[assignment]
        self.level_downsamples = tuple(float(d) for d in osr.level_downsamples)
        self.mpp = _number(self.properties.get(openslide.PROPERTY_NAME_MPP_X))
        self.magnification = _number(self.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
        self.version = openslide.__library_version__
        self._tiff = TiledTiffLevels.open(path, self.vendor, osr.level_dimensions)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Pixels from the TIFF tiles where the level allows it and the location falls on
        whole level pixels (elsewhere OpenSlide interpolates), else from OpenSlide."""
        if self._tiff is not None:
            downsample = self.level_downsamples[level]
            x, y = location[0] / downsample, location[1] / downsample
            if x.is_integer() and y.is_integer():
                try:
                    rgb = self._tiff.read(level, int(x), int(y), size[0], size[1])
                except Exception:  # a tile that fails to decode: OpenSlide reads (or reports) it
                    rgb = None
                if rgb is not None:
                    return rgb
        return rgba_to_rgb(self._osr.read_region(location, level, size))

    def best_level_for_downsample(self, downsample: float) -> int:
        """OpenSlide's own choice."""
        return int(self._osr.get_best_level_for_downsample(downsample))

    def associated_images(self) -> dict[str, np.ndarray]:
        """The label, macro and thumbnail images OpenSlide finds."""
        return {k: rgba_to_rgb(v) for k, v in self._osr.associated_images.items()}

    def close(self) -> None:
        """Close the OpenSlide handle and the TIFF file."""
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None
        self._osr.close()
