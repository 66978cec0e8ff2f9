"""The ``tiffslide`` reader: pyramidal TIFF, SVS and OME-TIFF through tifffile, locally or
from object storage and web servers (``http(s)://``, ``s3://``, ``gs://``) without a download.

Local files are OpenSlide's first (this reader is a fallback below it); URLs are this
reader's alone. A URL is opened through fsspec with range reads: only the TIFF directories and
the tiles a region covers are fetched, in blocks of :data:`BLOCK_SIZE` bytes, kept in memory
and in a local block cache on disk (``HISTOBAG_REMOTE_CACHE``, by default
``~/.cache/histobag/remote``; ``off`` keeps blocks in memory only), so a second run or a worker
process reopening the slide fetches nothing twice.

Pixels are OpenSlide's: regions at whole level pixels are the decoded tiles, pixels beyond the
level's edge are white, and the levels of an Aperio file are its tiled pages, as OpenSlide
counts them (tifffile takes the second tiled page of a file without a stripped thumbnail for
one). A level-0 location between two pixels of a lower level is floored to the level pixel,
where OpenSlide interpolates.

Needs ``pip install "histobag[remote]"`` (tiffslide, fsspec, aiohttp; ``s3fs`` / ``gcsfs``
for S3 and Google Cloud Storage).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from histobag.errors import MissingDependencyError, SlideOpenError
from histobag.optional import require
from histobag.slide.readers.base import SlideReader, positive_number, read_inside_level
from histobag.slide.readers.select import is_url

__all__ = ["BLOCK_SIZE", "CACHE_ENV", "TiffSlideReader", "cache_dir"]

#: Bytes fetched per range request (and cached per block). Slide tiles are tens of kB and
#: stored row by row, so one block holds a run of neighbouring tiles; fsspec's default for
#: HTTP (5 MB) would fetch a small slide whole.
BLOCK_SIZE = 256 * 2**10
#: Environment variable naming the block cache folder (``off``: memory only).
CACHE_ENV = "HISTOBAG_REMOTE_CACHE"
#: Blocks kept in memory per open slide (on top of the disk cache).
_MEMORY_BLOCKS = 64
#: Libraries fsspec needs per URL scheme, for the message when one is missing.
_SCHEME_PACKAGES = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs"}
#: tiffslide's standard property names → OpenSlide's (the rest keep tiffslide's names).
_OPENSLIDE_NAMES = (
    "comment",
    "vendor",
    "quickhash-1",
    "background-color",
    "objective-power",
    "mpp-x",
    "mpp-y",
    "bounds-x",
    "bounds-y",
    "bounds-width",
    "bounds-height",
)


def cache_dir() -> Path | None:
    """The block cache folder for remote slides (``None``: the cache is off)."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "none", "0") else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "histobag" / "remote"


def _properties(raw: dict[str, Any]) -> dict[str, str]:
    """The properties tiffslide parses, as strings, under OpenSlide's names where they exist."""
    out = {}
    for key, value in raw.items():
        if value is None or isinstance(value, dict):
            continue
        name = key
        if key.startswith("tiffslide."):
            rest = key.removeprefix("tiffslide.")
            if rest in _OPENSLIDE_NAMES or rest.startswith("level["):
                name = "openslide." + rest
        out[name] = str(value)
    return out


def _open_url(url: str, block_size: int, cache: Path | None) -> Any:
    """A random-access file for ``url``: ranged reads of ``block_size`` blocks, cached in
    memory and (unless ``cache`` is None) on disk."""
    fsspec = require("fsspec", extra="remote", purpose="Reading slides from URLs")
    scheme = url.split("://", 1)[0].lower()
    try:
        target = fsspec.filesystem(scheme)
    except ImportError as exc:
        package = _SCHEME_PACKAGES.get(scheme, f"an fsspec backend for {scheme}://")
        raise MissingDependencyError(
            f"Reading slides from {scheme}:// URLs needs {package}, which is not installed. "
            f'Install it with: pip install "histobag[remote]" (or pip install {package}).',
            module=package,
            extra="remote",
        ) from exc
    except ValueError as exc:  # fsspec knows no such protocol
        raise SlideOpenError(
            f"Cannot open {url}: fsspec has no filesystem for {scheme}://."
        ) from exc
    if cache is None:
        return target.open(
            url,
            "rb",
            block_size=block_size,
            cache_type="blockcache",
            cache_options={"maxblocks": _MEMORY_BLOCKS},
        )
    # One folder per block size: fsspec refuses a cached file reopened with another.
    storage = cache / f"blocks-{block_size}"
    fs = fsspec.filesystem("blockcache", fs=target, cache_storage=str(storage), check_files=True)
    return fs.open(url, "rb", block_size=block_size)


@functools.cache
def _level_pixel_slide(tiffslide: Any) -> type:
    """The ``TiffSlide`` class taking ``read_region`` locations in pixels of the level read
    (through its documented hook), so no level-0 coordinate is divided and rounded twice."""

    class LevelPixelSlide(tiffslide.TiffSlide):
        def _read_region_loc_transform(
            self, location: tuple[int, int], level: int
        ) -> tuple[int, int]:
            return int(location[0]), int(location[1])

    return LevelPixelSlide


def _aperio_levels(tif: Any) -> list[Any]:
    """The tiled pages of an Aperio file in order: OpenSlide's levels."""
    return [page for page in tif.pages if page.is_tiled]


class TiffSlideReader(SlideReader):
    """A slide opened with tiffslide, from a local path or a URL.

    Args:
        source: A local file or a ``http(s)://``, ``s3://`` or ``gs://`` URL.
        block_size: Bytes per range request for URLs.
        cache: Block cache folder for URLs (default: :func:`cache_dir`; ``None`` from the
            environment turns it off).

    Raises:
        MissingDependencyError: tiffslide (or the URL scheme's fsspec backend) is missing.
        SlideOpenError: The file does not exist or is not a TIFF slide tiffslide reads.
    """

    def __init__(
        self,
        source: str,
        *,
        block_size: int = BLOCK_SIZE,
        cache: Path | str | None = "default",
    ) -> None:
        tiffslide = require("tiffslide", extra="remote", purpose="The tiffslide slide reader")
        self.source = source
        self._file: Any = None
        if is_url(source):
            folder = cache_dir() if cache == "default" else cache
            try:
                self._file = _open_url(source, block_size, Path(folder) if folder else None)
            except (MissingDependencyError, SlideOpenError):
                raise
            except Exception as exc:  # network and HTTP errors differ per backend
                raise SlideOpenError(
                    f"Cannot open {source}: {type(exc).__name__}: {exc}. Check the URL, "
                    "that the server answers range requests, and credentials if needed."
                ) from None
            target: Any = self._file
        else:
            path = Path(source.removeprefix("file://"))
            if not path.is_file():
                raise SlideOpenError(f"Slide file {path} does not exist. Check the path.")
            target = str(path)
        try:
            self._slide = _level_pixel_slide(tiffslide)(target)
            raw = dict(self._slide.properties)
            dims = tuple(tuple(int(v) for v in d) for d in self._slide.level_dimensions)
        except Exception as exc:  # tifffile raises many kinds on foreign files
            self._close_file()
            raise SlideOpenError(
                f"Cannot open {source} with tiffslide: {type(exc).__name__}: {exc}."
            ) from None
        self.properties = _properties(raw)
        self.vendor = raw.get("tiffslide.vendor") or "generic-tiff"  # OpenSlide's name
        self.properties["openslide.vendor"] = self.vendor
        self.mpp = positive_number(raw.get("tiffslide.mpp-x"))
        self.magnification = positive_number(raw.get("tiffslide.objective-power"))
        self.version = str(tiffslide.__version__)
        # Aperio files whose second page is tiled: tifffile calls it the thumbnail, OpenSlide
        # a level (the files OpenSlide and tiffslide disagree on; real scanners write a
        # stripped thumbnail). Such levels are read from their pages.
        self._pages: list[Any] | None = None
        if self.vendor == "aperio":
            pages = _aperio_levels(self._slide.ts_tifffile)
            if len(pages) > len(dims):
                self._pages = pages
                dims = tuple((int(p.imagewidth), int(p.imagelength)) for p in pages)
        self._arrays: dict[int, Any] = {}
        self.level_dimensions = dims
        self.dimensions = dims[0]
        w0, h0 = dims[0]
        # OpenSlide's downsample: the mean of the width and height ratios.
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2.0 for w, h in dims)

    def _level_pixels(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Level pixels ``[y0:y1, x0:x1]`` (inside the level) as uint8 RGB."""
        if self._pages is not None:
            array = self._arrays.get(level)
            if array is None:
                zarr = require("zarr", extra="remote", purpose="The tiffslide slide reader")
                array = zarr.open(self._pages[level].aszarr(), mode="r")
                self._arrays[level] = array
            region = np.asarray(array[y0:y1, x0:x1])
        else:
            region = self._slide.read_region(
                (x0, y0), level, (x1 - x0, y1 - y0), as_array=True, padding=False
            )
        if region.ndim == 2:
            region = region[..., None]
        if region.shape[-1] == 1:  # grayscale
            region = np.repeat(region, 3, axis=-1)
        return np.ascontiguousarray(region[..., :3], dtype=np.uint8)

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
        """Label, macro and thumbnail images tiffslide finds, as uint8 RGB."""
        images = self._slide.associated_images
        out = {}
        for name in images:
            # Tiled pages are levels where OpenSlide's Aperio rule applies (see __init__).
            if self._pages is not None and images.series_map[name].keyframe.is_tiled:
                continue
            out[name] = np.asarray(images[name].convert("RGB"))
        return out

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Close the slide and, for a URL, its remote file (saving the block cache index)."""
        self._slide.close()
        self._close_file()
