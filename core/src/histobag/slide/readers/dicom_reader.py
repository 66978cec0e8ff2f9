"""The ``dicom`` reader: DICOM whole-slide images (VL Whole Slide Microscopy), with wsidicom.

A DICOM slide is several files, usually one per pyramid level (plus label and overview
images), in one folder. The reader opens either that folder or any one ``.dcm`` file of the
slide; from a file it takes the files of the folder that belong to the same series, as
OpenSlide does. Levels are read through wsidicom (which decodes JPEG, JPEG 2000, JPEG-LS,
HTJ2K and uncompressed frames); a region reads only the frames it covers.

It also opens one series on a DICOMweb server (a PACS over HTTP), named by a
``dicomweb+https://HOST/PREFIX/studies/STUDY_UID/series/SERIES_UID`` URL; see
:mod:`histobag.slide.readers.dicomweb` (a bearer token comes from ``HISTOBAG_DICOMWEB_TOKEN``).

wsidicom is an optional extra: ``pip install "histobag[dicom]"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from histobag.errors import SlideOpenError
from histobag.optional import require
from histobag.slide.readers.array_reader import ArrayReader, level_downsamples, to_rgb
from histobag.slide.readers.base import positive_number
from histobag.slide.readers.dicomweb import is_dicomweb_url, open_dicomweb

__all__ = ["DicomReader", "is_dicom_file"]

#: Every DICOM Part 10 file: a 128-byte preamble, then these four bytes.
_MAGIC = b"DICM"


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (read from its first 132 bytes)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == _MAGIC
    except OSError:
        return False


def _series_files(path: Path) -> list[Path]:
    """The DICOM files in ``path``'s folder that share its SeriesInstanceUID."""
    pydicom = require("pydicom", extra="dicom", purpose="The dicom slide reader")

    def series(file: Path) -> str | None:
        try:
            header = pydicom.dcmread(
                file, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]
            )
        except Exception:  # not readable as DICOM: not part of the slide
            return None
        return str(header.get("SeriesInstanceUID", "")) or None

    uid = series(path)
    if uid is None:
        raise SlideOpenError(f"{path} has no SeriesInstanceUID")
    siblings = [f for f in sorted(path.parent.iterdir()) if f.is_file() and is_dicom_file(f)]
    return [f for f in siblings if f == path or series(f) == uid]


def _open_files(path: Path) -> Any:
    """``path`` (a folder, or one file of the slide) opened as a ``wsidicom.WsiDicom``."""
    if path.is_dir():
        files: Path | list[Path] = path
        if not any(is_dicom_file(f) for f in path.iterdir() if f.is_file()):
            raise SlideOpenError(f"Folder {path} holds no DICOM file.")
    elif path.is_file():
        if not is_dicom_file(path):  # before importing wsidicom: most files are not DICOM
            raise SlideOpenError(f"{path} is not a DICOM file (no DICM marker).")
        files = _series_files(path)
    else:
        raise SlideOpenError(f"DICOM slide {path} does not exist. Check the path.")
    wsidicom = require("wsidicom", extra="dicom", purpose="The dicom slide reader")
    try:
        return wsidicom.WsiDicom.open(files)
    except Exception as exc:  # wsidicom raises its own errors and pydicom's
        raise SlideOpenError(
            f"Cannot open DICOM slide {path}: {type(exc).__name__}: {exc}. It needs the "
            "whole-slide image files (VL Whole Slide Microscopy Image) of one slide."
        ) from None


class DicomReader(ArrayReader):
    """A DICOM WSI (a folder, one ``.dcm`` file of the slide, or a ``dicomweb+http(s)://``
    series URL) read with wsidicom."""

    def __init__(self, source: str) -> None:
        if is_dicomweb_url(source):
            self._wsi = open_dicomweb(source)
        else:
            self._wsi = _open_files(Path(source))
        wsidicom = require("wsidicom", extra="dicom", purpose="The dicom slide reader")
        self._levels = list(self._wsi.levels)
        if not self._levels:
            self._wsi.close()
            raise SlideOpenError(f"DICOM slide {source} has no pyramid level.")
        self.source = source
        self.level_dimensions = tuple(
            (int(level.size.width), int(level.size.height)) for level in self._levels
        )
        self.dimensions = self.level_dimensions[0]
        self.level_downsamples = level_downsamples(list(self.level_dimensions))
        self.mpp = self._mpp()
        self.magnification = self._magnification()
        self.vendor = "dicom"  # what OpenSlide reports for the same files
        self.version = str(getattr(wsidicom, "__version__", ""))
        self.properties = self._properties()

    def _mpp(self) -> float | None:
        try:
            return positive_number(self._wsi.mpp.width)
        except Exception:  # no PixelSpacing recorded
            return None

    def _magnification(self) -> float | None:
        try:
            paths = self._wsi.metadata.pyramid.optical_paths
            objective = paths[0].objective if paths else None
        except Exception:  # metadata wsidicom cannot model: the magnification is unknown
            return None
        return positive_number(objective.objective_power) if objective is not None else None

    def _properties(self) -> dict[str, str]:
        props = {"openslide.vendor": "dicom", "dicom.levels": str(len(self._levels))}
        try:
            metadata = self._wsi.metadata
            found = {
                "Manufacturer": metadata.equipment.manufacturer,
                "ManufacturerModelName": metadata.equipment.model_name,
                "StudyInstanceUID": metadata.study.uid,
                "SeriesInstanceUID": metadata.series.uid,
            }
        except Exception:  # metadata wsidicom cannot model: only the pixels are listed
            found = {}
        props.update({f"dicom.{k}": str(v) for k, v in found.items() if v not in (None, "")})
        if self.mpp is not None:
            props["openslide.mpp-x"] = props["openslide.mpp-y"] = repr(self.mpp)
        if self.magnification is not None:
            props["openslide.objective-power"] = repr(self.magnification)
        return props

    def read_window(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Level pixels ``[y0:y1, x0:x1]`` (inside the level) from the frames they cover."""
        pixels = self._wsi.read_region(
            (x0, y0), self._levels[level].level, (x1 - x0, y1 - y0), as_array=True
        )
        return to_rgb(np.asarray(pixels, dtype=np.uint8))

    def associated_images(self) -> dict[str, np.ndarray]:
        """The label and the overview (OpenSlide's ``macro``) when the slide has them."""
        found: dict[str, np.ndarray] = {}
        for name, read, present in (
            ("label", self._wsi.read_label, self._wsi.labels),
            ("macro", self._wsi.read_overview, self._wsi.overviews),
        ):
            if present:
                found[name] = np.asarray(read().convert("RGB"))
        return found

    def close(self) -> None:
        """Close the DICOM files."""
        self._wsi.close()
