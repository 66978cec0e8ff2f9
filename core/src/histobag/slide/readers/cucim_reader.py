"""The ``cucim`` reader: pyramidal TIFF and Aperio SVS through NVIDIA's cuCIM (``CuImage``).

Opt-in: ``WSI(path, reader="cucim")`` (``histobag extract --reader cucim``); ``reader="auto"``
tries it last (priority -20), after OpenSlide, tiffslide and the image reader. Decoding on
the CPU, it read tiles at 0.75-0.95 times the speed of histobag's OpenSlide reader on
generated JPEG and uncompressed slides (medians of paired rounds). Local files only.

cuCIM reads tiled, 8-bit, 3-sample TIFF levels compressed with JPEG, LZW, deflate (without a
predictor), JPEG 2000 (Aperio) or not at all. Before cuCIM sees a file, tifffile checks it
against that list (:func:`unsupported_reason`): cuCIM ends the whole process with a
segmentation fault on some files (deflate with a horizontal predictor, as in OpenSlide's
``boxes.tiff``) and reads others (stripped, grayscale, 16-bit, planar) through a slow path
that returns four channels or wrong values, so those are refused with
:class:`~histobag.errors.SlideOpenError` instead.

Pixels, compared with OpenSlide's on generated slides (``tests/core/test_reader_cucim.py``):

- Equal for uncompressed, LZW, deflate, JPEG (RGB or YCbCr) and Aperio JPEG 2000 RGB
  (compression 33005) tiles, at level 0 and lower levels, inside and across the edge
  (cuCIM pads with black or refuses regions beyond the level; this reader reads the part
  inside and makes the rest white).
- Aperio JPEG 2000 YCbCr (compression 33003, what Aperio scanners write for JPEG 2000):
  within 1 level of OpenSlide's, not equal (about 30% of pixels differ by 1; the YCbCr to RGB
  conversion rounds differently).
- A corrupt JPEG tile is not an error: cuCIM prints a libjpeg message and returns black
  pixels where OpenSlide raises. The first tile of the smallest level is decoded with
  tifffile when the slide is opened (a file that fails there is refused, as OpenSlide's
  ``unreadable.svs``), but a corrupt tile elsewhere reads as black.
- A level-0 location between two pixels of a lower level is floored to the level pixel,
  where OpenSlide interpolates.

Levels and downsamples are OpenSlide's (downsample: the mean of the width and height
ratios); mpp is cuCIM's spacing where its unit is a length, else Aperio's ``MPP``.

Decoding runs on the CPU. ``device="cuda"`` (or ``HISTOBAG_CUCIM_DEVICE=cuda``) asks cuCIM to
decode on the GPU (nvJPEG) and copies the pixels back to the host; it is allowed only when
``torch.cuda.is_available()``, and has never run on a GPU in histobag's tests (its pixels
may differ from the CPU's; the device is recorded with the reader's version).

Needs ``pip install "histobag[cucim]"`` (``cucim-cu13``, the CUDA 13 build matching torch's
wheels; Linux x86-64 only; Apache-2.0). On a machine without a CUDA driver, importing cuCIM
prints ``dlopen error libcuda.so.1`` and ``cuFile initialization failed``: harmless, decoding
runs on the CPU.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from histobag.errors import SlideOpenError
from histobag.optional import require
from histobag.slide.readers.base import SlideReader, positive_number, read_inside_level

__all__ = ["DEVICE_ENV", "SUPPORTED_COMPRESSIONS", "CuCIMReader", "unsupported_reason"]

#: Environment variable giving the default decode device (``cpu`` or ``cuda``).
DEVICE_ENV = "HISTOBAG_CUCIM_DEVICE"

#: TIFF compressions cuCIM decodes on its fast path, by code.
SUPPORTED_COMPRESSIONS = {
    1: "none",
    5: "LZW",
    7: "JPEG",
    8: "deflate",
    32946: "deflate",
    33003: "Aperio JPEG 2000 YCbCr",
    33005: "Aperio JPEG 2000 RGB",
}
#: Deflate codes: cuCIM crashes on these with a predictor.
_DEFLATE = (8, 32946)
#: TIFF photometric interpretations of colour slides: RGB, YCbCr.
_PHOTOMETRIC = (2, 6)
#: Micrometres per unit of cuCIM's spacing units.
_UNIT_UM = {"micrometer": 1.0, "millimeter": 1e3, "centimeter": 1e4, "nanometer": 1e-3}


def _page_problem(index: int, page: Any) -> str | None:
    """Why cuCIM cannot read TIFF page ``index`` (a pyramid level), or None."""
    compression = int(page.compression)
    where = f"page {index}"
    if not page.is_tiled:
        return f"{where} is not tiled"
    if compression not in SUPPORTED_COMPRESSIONS:
        return f"{where} has TIFF compression {compression}, which cuCIM does not decode"
    if int(page.bitspersample) != 8 or int(page.samplesperpixel) != 3:
        return (
            f"{where} has {page.samplesperpixel} samples of {page.bitspersample} bits "
            "(cuCIM reads 8-bit RGB)"
        )
    if int(page.planarconfig) != 1:
        return f"{where} stores its colour planes separately"
    if int(page.photometric) not in _PHOTOMETRIC:
        return f"{where} is not RGB or YCbCr (photometric {int(page.photometric)})"
    return None


def _first_tile_problem(tif: tifffile.TiffFile, index: int, page: Any) -> str | None:
    """Why the first tile of ``page`` does not decode (tifffile's codecs), or None.

    cuCIM turns a tile it cannot decode into black pixels without an error; one tile of the
    smallest level is what ``reader="auto"`` decodes to tell a readable file (OpenSlide
    raises there).
    """
    if not page.databytecounts[0]:  # a tile the scanner left out: white, not an error
        return None
    handle = tif.filehandle
    handle.seek(page.dataoffsets[0])
    data = handle.read(page.databytecounts[0])
    try:
        page.decode(data, 0, jpegtables=page.jpegtables)
    except Exception as exc:  # each codec raises its own error
        return f"the first tile of page {index} does not decode ({type(exc).__name__}: {exc})"
    return None


def unsupported_reason(path: str | Path) -> str | None:
    """Why cuCIM cannot read the slide at ``path`` exactly, or None when it can.

    Checked with tifffile before cuCIM opens the file: cuCIM crashes the process on some
    files, and decodes a corrupt tile to black, instead of raising.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            for index, page in enumerate(pages):
                if int(page.compression) in _DEFLATE and int(page.predictor) != 1:
                    return f"page {index} is deflate with a predictor (cuCIM would crash)"
            levels = [(i, p) for i, p in enumerate(pages) if p.is_tiled or i == 0]
            for index, page in levels:
                problem = _page_problem(index, page)
                if problem is not None:
                    return problem
            return _first_tile_problem(tif, *levels[-1])
    except tifffile.TiffFileError as exc:
        return f"not a TIFF file ({exc})"


def _mpp(image: Any, metadata: dict[str, Any]) -> float | None:
    """Level-0 µm per pixel: cuCIM's x spacing where its unit is a length, else Aperio's MPP."""
    dims = str(image.dims)
    spacing, units = list(image.spacing()), list(image.spacing_units())
    if "X" in dims:
        axis = dims.index("X")
        scale = _UNIT_UM.get(str(units[axis]).lower())
        value = positive_number(spacing[axis])
        if scale is not None and value is not None:
            return value * scale
    return positive_number((metadata.get("aperio") or {}).get("MPP"))


def _properties(metadata: dict[str, Any]) -> dict[str, str]:
    """The metadata groups cuCIM parses, as ``group.key`` strings (its own summary left out)."""
    out = {}
    for group, values in metadata.items():
        if group == "cucim" or not isinstance(values, dict):
            continue
        for key, value in values.items():
            if value is not None and not isinstance(value, (dict, list)):
                out[f"{group}.{key}"] = str(value)
    return out


def _device(device: str | None) -> str:
    """The decode device: ``cpu``, or ``cuda``/``cuda:N`` where torch sees a GPU."""
    value = (device or os.environ.get(DEVICE_ENV) or "cpu").strip().lower()
    if value == "cpu":
        return value
    if value != "cuda" and not (value.startswith("cuda:") and value[5:].isdigit()):
        raise SlideOpenError(
            f"cuCIM decode device must be 'cpu', 'cuda' or 'cuda:N', got {value!r} "
            f"(argument device= or ${DEVICE_ENV})."
        )
    import torch  # only to ask for a GPU; torch is a core dependency

    if not torch.cuda.is_available():
        raise SlideOpenError(
            f"cuCIM decode device {value!r} was asked for, but torch sees no CUDA GPU. Use "
            f"device='cpu' (unset ${DEVICE_ENV})."
        )
    return value


def _level0(pixel: int, downsample: float) -> int:
    """A level-0 coordinate that cuCIM maps to level pixel ``pixel``: cuCIM divides by its
    downsample in float32 and truncates, so the exact product may land one pixel short."""
    ds = np.float32(downsample)
    location = math.ceil(pixel * downsample)
    while int(np.float32(location) / ds) < pixel:
        location += 1
    while location > 0 and int(np.float32(location) / ds) > pixel:
        location -= 1
    return location


class CuCIMReader(SlideReader):
    """A local TIFF/SVS slide opened with cuCIM.

    Args:
        source: A local file (``file://`` prefix allowed).
        device: Decode device, ``"cpu"`` (default, or ``$HISTOBAG_CUCIM_DEVICE``) or
            ``"cuda"``; ``"cuda"`` needs ``torch.cuda.is_available()`` (never run on a GPU
            in histobag's tests).

    Raises:
        MissingDependencyError: cuCIM is not installed.
        SlideOpenError: The file does not exist, is not a TIFF cuCIM reads exactly
            (:func:`unsupported_reason`), or cuCIM refuses it.
    """

    def __init__(self, source: str, *, device: str | None = None) -> None:
        # cuCIM's GPU file layer (cuFile) logs its start-up, failed without a CUDA driver,
        # to ./cufile.log unless told otherwise: keep users' working folders clean.
        os.environ.setdefault("CUFILE_LOGFILE_PATH", os.devnull)
        cucim = require("cucim", extra="cucim", purpose="The cucim slide reader")
        self.source = source
        self.device = _device(device)
        path = Path(source.removeprefix("file://"))
        if not path.is_file():
            raise SlideOpenError(f"Slide file {path} does not exist. Check the path.")
        problem = unsupported_reason(path)
        if problem is not None:
            raise SlideOpenError(
                f"cuCIM cannot read {path} exactly: {problem}. Use reader='openslide' or "
                "'tiffslide' for this file."
            )
        try:
            self._image = cucim.CuImage(str(path))
            resolutions = self._image.resolutions
            metadata = dict(self._image.metadata)
        except Exception as exc:  # cuCIM raises RuntimeError/ValueError on foreign files
            raise SlideOpenError(f"Cannot open {path} with cuCIM: {exc}.") from None
        if str(self._image.typestr) != "|u1" or list(self._image.shape)[-1] != 3:
            raise SlideOpenError(f"cuCIM reads {path} as {self._image.shape}, not 8-bit RGB.")
        dims = tuple((int(w), int(h)) for w, h in resolutions["level_dimensions"])
        #: cuCIM's own downsamples (float32), to turn level pixels into its coordinates.
        self._cucim_downsamples = tuple(float(d) for d in resolutions["level_downsamples"])
        self.level_dimensions = dims
        self.dimensions = dims[0]
        w0, h0 = dims[0]
        # OpenSlide's downsample: the mean of the width and height ratios.
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2.0 for w, h in dims)
        self.properties = _properties(metadata)
        aperio = metadata.get("aperio") or {}
        self.vendor = "aperio" if aperio else "philips" if "philips" in metadata else None
        self.vendor = self.vendor or "generic-tiff"  # OpenSlide's names
        self.mpp = _mpp(self._image, metadata)
        self.magnification = positive_number(aperio.get("AppMag"))
        self.properties["openslide.vendor"] = self.vendor
        if self.mpp is not None:
            self.properties["openslide.mpp-x"] = str(self.mpp)
        if self.magnification is not None:
            self.properties["openslide.objective-power"] = str(self.magnification)
        version = str(cucim.__version__)
        self.version = version if self.device == "cpu" else f"{version} device={self.device}"

    def _level_pixels(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Level pixels ``[y0:y1, x0:x1]`` (inside the level) as uint8 RGB."""
        ds = self._cucim_downsamples[level]
        location = (_level0(x0, ds), _level0(y0, ds))
        region = self._image.read_region(location, (x1 - x0, y1 - y0), level, device=self.device)
        if self.device == "cpu":
            pixels = np.asarray(region)
        else:
            cupy = require("cupy", extra="cucim", purpose="cuCIM's GPU decoding")
            pixels = cupy.asnumpy(cupy.asarray(region))
        return np.ascontiguousarray(pixels[..., :3], dtype=np.uint8)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """uint8 RGB ``(size[1], size[0], 3)`` of ``level`` from level-0 ``location``; pixels
        beyond the level's edge are white."""
        return read_inside_level(
            location,
            self.level_downsamples[level],
            self.level_dimensions[level],
            size,
            lambda x0, y0, x1, y1: self._level_pixels(level, x0, y0, x1, y1),
        )

    def associated_images(self) -> dict[str, np.ndarray]:
        """Label, macro and thumbnail images cuCIM finds, as uint8 RGB."""
        out = {}
        for name in sorted(self._image.associated_images):
            pixels = np.asarray(self._image.associated_image(name))
            if pixels.ndim == 3 and pixels.shape[-1] >= 3:
                out[name] = np.ascontiguousarray(pixels[..., :3], dtype=np.uint8)
        return out

    def close(self) -> None:
        """Close cuCIM's file."""
        self._image.close()

    def __getstate__(self) -> dict[str, Any]:
        # cuCIM's handle cannot be pickled: the copy reopens the file.
        return {"source": self.source, "device": self.device}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source"], device=state["device"])  # type: ignore[misc]
