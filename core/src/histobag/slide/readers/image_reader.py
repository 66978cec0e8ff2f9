"""The ``image`` reader: plain PNG, JPEG and TIFF images without a pyramid.

Scans exported as ordinary images (a cropped region, a microscope camera's frame, a tissue
microarray core) have one level and usually no pixel size: pass ``WSI(..., mpp=)``. A
resolution tag counts only when it is plausible for a slide (:data:`~.array_reader.DPI_MPP_MAX`).

TIFF goes through tifffile (:class:`~.tiff_reader.TiffReader`): regions decode only the strips
or tiles they cover. PNG and JPEG cannot be read in parts, so the image is decoded once, on the
first region, and kept (3 bytes per pixel: 300 MB for a 10,000-pixel square); an image larger
than Pillow's decompression-bomb limit is refused with advice to convert it to a tiled TIFF.

Registered below OpenSlide: a tiled TIFF that OpenSlide opens stays with OpenSlide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from histobag.errors import SlideOpenError
from histobag.slide.readers.array_reader import ArrayReader, mpp_from_dpi, to_rgb
from histobag.slide.readers.base import SlideReader
from histobag.slide.readers.tiff_reader import TiffReader

__all__ = ["PillowImageReader", "open_image"]

#: Suffixes read with tifffile rather than Pillow.
_TIFF_SUFFIXES = (".tif", ".tiff")
#: Pillow modes of 8-bit samples, converted to RGB.
_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})


def open_image(source: str) -> SlideReader:
    """The ``image`` reader's factory: TIFF with tifffile, anything else with Pillow.

    Args:
        source: Path of a ``.png``, ``.jpg``/``.jpeg`` or ``.tif``/``.tiff`` file.
    """
    if source.lower().endswith(_TIFF_SUFFIXES):
        return TiffReader(source)
    return PillowImageReader(source)


class PillowImageReader(ArrayReader):
    """A PNG, JPEG (or other Pillow-readable) image as a one-level slide.

    Args:
        source: Path of the image.
    """

    def __init__(self, source: str) -> None:
        path = Path(source)
        if not path.is_file():
            raise SlideOpenError(f"Slide file {path} does not exist. Check the path.")
        try:
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
                mode, image_format, info = image.mode, image.format, dict(image.info)
        except Image.DecompressionBombError:
            raise SlideOpenError(
                f"Cannot open {path}: the image is too large to decode whole (over Pillow's "
                f"{Image.MAX_IMAGE_PIXELS * 2:,}-pixel limit). Convert it to a tiled pyramidal "
                "TIFF (e.g. with tifffile or libvips) and read that."
            ) from None
        except Exception as exc:  # Pillow raises several kinds on a foreign file
            raise SlideOpenError(f"Cannot open {path} as an image: {exc}.") from None
        if mode not in _MODES:
            raise SlideOpenError(
                f"Cannot read {path} as a slide: Pillow mode {mode} is not 8-bit RGB or gray. "
                "Convert it to 8-bit RGB first."
            )
        self.source = str(path)
        self.dimensions = (int(width), int(height))
        self.level_dimensions = (self.dimensions,)
        self.level_downsamples = (1.0,)
        dpi = info.get("dpi")
        self.mpp = mpp_from_dpi(float(dpi[0])) if dpi else None
        self.vendor = (image_format or path.suffix.lstrip(".")).lower()
        self.version = PIL.__version__
        self.properties = {"openslide.vendor": self.vendor, "openslide.level-count": "1"}
        if self.mpp is not None:
            self.properties["openslide.mpp-x"] = self.properties["openslide.mpp-y"] = repr(self.mpp)
        self._pixels: np.ndarray | None = None

    def _decoded(self) -> np.ndarray:
        if self._pixels is None:
            with Image.open(self.source) as image:
                if image.mode in ("RGB", "L", "RGBA", "LA"):
                    array = np.asarray(image)
                else:  # palette, CMYK, 1-bit...: Pillow converts (with alpha when there is one)
                    has_alpha = "A" in image.mode or "transparency" in image.info
                    array = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
            if array.ndim == 3 and array.shape[-1] == 2:  # gray + alpha
                array = np.concatenate([np.repeat(array[..., :1], 3, axis=-1), array[..., 1:]], -1)
            self._pixels = to_rgb(array)
        return self._pixels

    def read_window(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The window's pixels from the decoded image (decoded on the first call)."""
        return self._decoded()[y0:y1, x0:x1]

    def close(self) -> None:
        """Drop the decoded pixels."""
        self._pixels = None
