"""``WSI``: a whole-slide image, read through a slide reader (OpenSlide by default), with its
tile grid.

The reader (:mod:`histobag.slide.readers`) only opens the file and reads regions; the grid,
tissue detection, ROIs and resizing are done here, the same way for every reader.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from histobag import validation
from histobag.errors import MissingMPPError, SlideReadError
from histobag.io.images import encode_image
from histobag.io.tfrecord import TFRecordWriter
from histobag.naming import safe_name
from histobag.slide import tissue as _tissue
from histobag.slide.errors import TileSettingsError
from histobag.slide.magnification import TileUm, tile_microns
from histobag.slide.readers.base import SlideReader
from histobag.slide.readers.openslide_reader import rgba_to_rgb
from histobag.slide.readers.select import AUTO, DICOM_UID, is_url, open_reader
from histobag.slide.roi import ROI, as_rois, points_in_rois
from histobag.slide.tiling import Level, best_level, grid_starts, read_size

__all__ = ["MASK_MAX_SIDE", "MASK_MPP", "MPP_RANGE", "RESIZE_FILTER", "WSI", "rgba_to_rgb"]


#: Plausible level-0 microns per pixel. Values outside usually come from a TIFF's default
#: 72-dpi resolution tag (352.8 µm/px) rather than from a scanner, so they count as missing
#: (and an ``mpp=`` given outside it is refused).
MPP_RANGE = validation.MPP_RANGE

#: Pillow filter used to resize a region read from a pyramid level to ``tile_px``.
RESIZE_FILTER = Image.Resampling.LANCZOS

#: Resolution (µm per pixel) of the thumbnail the tissue mask is computed on.
MASK_MPP = 8.0
#: Largest side, in pixels, of that thumbnail.
MASK_MAX_SIDE = 4096

RoiMethod = Literal["auto", "inside", "outside", "ignore"]


#: Most tiles read with one OpenSlide call (bounds the size of one region in memory).
_STRIP_TILES = 16


class WSI:
    """A whole-slide image and the grid of tiles to extract from it.

    The slide is divided into a grid of square tiles of ``tile_um`` micrometres (level-0 side
    :attr:`full_extract_px`), stepped by :attr:`stride_px`. Each tile is read from the
    lowest-resolution pyramid level that still holds ``tile_px`` pixels for it, then resized
    to ``tile_px`` (with :data:`RESIZE_FILTER`, only when the sizes differ).

    A grid position is kept when (1) the thumbnail tissue mask covers at least
    ``tissue_fraction`` of it and (2) its centre passes the ROI rule. Kept tiles are listed in
    row-major order in :attr:`coords`, which depends only on the settings and the slide, never on
    tile pixels. The grayspace / whitespace filters need pixels, so they are evaluated when tiles
    are read (``read_tiles(..., return_mask=True)``, :meth:`extract_tiles`) or for all tiles at
    once by :meth:`filter_tiles`.

    Args:
        path: Slide file, folder (OME-Zarr, DICOM) or URL (``https://``, ``s3://``...: needs
            a reader for it, e.g. ``histobag[remote]``).
        tile_px: Tile side in pixels after resizing.
        tile_um: Tile side in µm, or a magnification such as ``"20x"`` (``tile_px * 10 / 20``
            µm).
        stride_div: Stride as a fraction of the tile: 1 for no overlap, 2 for half-tile steps.
        mpp: Level-0 microns per pixel, overriding (or standing in for) the slide's own.
        roi: A GeoJSON / CSV ROI file, an :class:`~histobag.slide.roi.ROI`, or a list of ROIs
            or (N, 2) vertex arrays, in level-0 pixels.
        roi_method: ``"inside"`` keeps tiles whose centre lies in an ROI, ``"outside"`` those
            outside all ROIs, ``"ignore"`` disregards ROIs, ``"auto"`` is ``"inside"`` when
            ROIs are given, else ``"ignore"``.
        tissue: A registered tissue detector's name (``"hsv"``, the default: keeps pale and
            haematoxylin-only tissue, drops pen marks and dust; ``"otsu"``: Otsu on the
            thumbnail's HSV saturation, the default before), ``{"name": ..., "kwargs":
            {...}}``, ``None`` (no tissue detection), or a callable mapping an RGB uint8
            thumbnail (H, W, 3) (and ``mpp=``, its µm per pixel) to a bool mask. What was
            used is :attr:`tissue_record`.
        tissue_fraction: Smallest fraction of a tile's footprint the tissue mask must cover.
        grayspace_fraction: Discard a tile when more than this fraction of its pixels is gray
            (1.0 disables the filter).
        grayspace_threshold: HSV saturation (0-1) below which a pixel counts as gray.
        whitespace_fraction: Discard a tile when more than this fraction of its pixels is white
            (1.0, the default, disables the filter).
        whitespace_threshold: Brightness (0-255) above which a pixel with all of R, G, B above
            it counts as white.
        use_edge_tiles: Also tile the partial strip at the right and bottom edges (the part
            beyond the slide reads as white).
        reader: ``"auto"`` (the first registered reader that opens the slide, OpenSlide for
            the formats it knows) or a reader's name (``histobag slides --readers`` lists
            them). The reader used is :attr:`reader_name`.

    Raises:
        SlideOpenError: The file cannot be opened.
        SlideReadError: The thumbnail for tissue detection cannot be read.
        MissingMPPError: The slide records no (plausible) mpp and none was passed.
        TileSettingsError: A setting is invalid.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        tile_px: int,
        tile_um: TileUm,
        *,
        stride_div: int | float = 1,
        mpp: float | None = None,
        roi: str | Path | ROI | Iterable[Any] | None = None,
        roi_method: RoiMethod = "auto",
        tissue: str | dict[str, Any] | _tissue.TissueDetector | None = (
            _tissue.DEFAULT_TISSUE_DETECTOR
        ),
        tissue_fraction: float = 0.5,
        grayspace_fraction: float = 0.6,
        grayspace_threshold: float = 0.05,
        whitespace_fraction: float = 1.0,
        whitespace_threshold: int = 230,
        use_edge_tiles: bool = False,
        reader: str = AUTO,
    ) -> None:
        self.source = os.fspath(path)
        #: The slide's file or folder (a URL stays a string).
        self.path: Path | str = self.source if is_url(self.source) else Path(self.source)
        last = Path(self.source.split("?", 1)[0].rstrip("/")).name
        # A DICOMweb series URL ends in the series' UID, whose dots are no suffix.
        self.name = (last if DICOM_UID.fullmatch(last) else last.split(".", 1)[0]) or "slide"
        if isinstance(self.path, Path):
            self.name = self.path.stem
        self.tile_microns = tile_microns(tile_px, tile_um)
        validation.check_tile_size(tile_px, tile_um, error=TileSettingsError)
        for name, value in [
            ("tissue_fraction", tissue_fraction),
            ("grayspace_fraction", grayspace_fraction),
            ("grayspace_threshold", grayspace_threshold),
            ("whitespace_fraction", whitespace_fraction),
        ]:
            validation.check_fraction(name, value, error=TileSettingsError)
        if not isinstance(whitespace_threshold, numbers.Real) or not (
            0 <= whitespace_threshold <= 255
        ):
            raise TileSettingsError(
                f"whitespace_threshold must be a brightness from 0 to 255, got "
                f"{whitespace_threshold!r}."
            )
        self.tile_px = int(tile_px)
        self.tile_um = tile_um
        self.grayspace_fraction = grayspace_fraction
        self.grayspace_threshold = grayspace_threshold
        self.whitespace_fraction = whitespace_fraction
        self.whitespace_threshold = whitespace_threshold
        self.use_edge_tiles = use_edge_tiles
        self._reader: SlideReader | None = None
        #: The reader used (a registered name), and its library's version.
        self.reader_name, self._reader = open_reader(self.source, reader)
        slide = self._reader
        self.reader_version: str = slide.version
        self.properties: dict[str, str] = dict(slide.properties)
        self.vendor: str | None = slide.vendor
        self.dimensions: tuple[int, int] = tuple(slide.dimensions)  # type: ignore[assignment]
        self.levels = [
            Level(i, tuple(dims), float(ds))  # type: ignore[arg-type]
            for i, (dims, ds) in enumerate(zip(slide.level_dimensions, slide.level_downsamples))
        ]
        self.recorded_mpp: float | None = slide.mpp
        self.mpp = self._resolve_mpp(mpp)

        self.full_extract_px = round(self.tile_microns / self.mpp)
        if self.full_extract_px < 1:
            raise TileSettingsError(
                f"A {self.tile_microns:g} µm tile is smaller than one pixel of {self.name} "
                f"(mpp {self.mpp:g}); use a larger tile_um."
            )
        if not isinstance(stride_div, numbers.Real) or not stride_div >= 1:
            raise TileSettingsError(f"stride_div must be a number >= 1, got {stride_div!r}.")
        self.stride_div = stride_div
        self.stride_px = max(1, int(self.full_extract_px / stride_div))
        self.level = best_level(self.levels, self.full_extract_px, tile_px)
        self.read_px = read_size(self.full_extract_px, self.levels[self.level].downsample)

        self.rois = as_rois(roi)
        self.roi_method = self._resolve_roi_method(roi_method)
        self.tissue_fraction = tissue_fraction
        self.tissue_mask: np.ndarray | None = None
        self._build_grid(tissue)

    # ---------------------------------------------------------------- setup

    @property
    def _slide(self) -> SlideReader:
        """The reader, opened on first use (and again after unpickling, with the same one)."""
        if self._reader is None:
            _, self._reader = open_reader(self.source, self.reader_name)
        return self._reader

    def _resolve_mpp(self, mpp: float | None) -> float:
        if mpp is not None:
            return validation.check_mpp(mpp, error=TileSettingsError)
        value = math.nan if self.recorded_mpp is None else float(self.recorded_mpp)
        if MPP_RANGE[0] <= value <= MPP_RANGE[1]:
            return value
        found = (
            f"records an implausible mpp of {value:g} µm/px (often a default resolution tag)"
            if not math.isnan(value)
            else "does not record its microns per pixel"
        )
        raise MissingMPPError(
            f"Slide {self.path} {found}. Pass the scan resolution explicitly, e.g. "
            "WSI(path, ..., mpp=0.25) for a 40x scan or mpp=0.5 for 20x (Dataset(..., mpp=), "
            "histobag extract --mpp)."
        )

    def _resolve_roi_method(self, roi_method: str) -> str:
        if roi_method not in ("auto", "inside", "outside", "ignore"):
            raise TileSettingsError(
                f"roi_method must be 'auto', 'inside', 'outside' or 'ignore', got {roi_method!r}."
            )
        if roi_method == "auto":
            return "inside" if self.rois else "ignore"
        if roi_method == "inside" and not self.rois:
            raise TileSettingsError(
                f"roi_method='inside' but no ROI was given for {self.name}; pass roi= (a GeoJSON "
                "or CSV file) or use roi_method='auto'."
            )
        return roi_method

    def _mask_size(self) -> tuple[int, int]:
        # The mask has a fixed physical resolution: tissue structures have a physical size, so
        # the blur and Otsu behave alike on every slide. 8 µm/px (slideflow thumbnails are
        # similar), finer when tiles are small so each tile spans at least 4 mask pixels; never
        # finer than level 0, and at most MASK_MAX_SIDE pixels on the long side.
        width, height = self.dimensions
        mask_mpp = min(MASK_MPP, self.tile_microns / 4)
        scale = max(mask_mpp / self.mpp, max(width, height) / MASK_MAX_SIDE, 1.0)
        return max(1, round(width / scale)), max(1, round(height / scale))

    def _build_grid(self, tissue: str | dict[str, Any] | _tissue.TissueDetector | None) -> None:
        width, height = self.dimensions
        extent, stride = self.full_extract_px, self.stride_px
        self.grid_x = grid_starts(width, extent, stride, self.use_edge_tiles)
        self.grid_y = grid_starts(height, extent, stride, self.use_edge_tiles)
        grid = np.ones((len(self.grid_y), len(self.grid_x)), dtype=bool)

        detector, self.tissue_record = _tissue.resolve_tissue_detector(tissue)
        if detector is not None and grid.size:
            size = self._mask_size()
            thumb = self._read_thumbnail(size, Image.Resampling.BOX)
            mask_mpp = self.mpp * width / size[0]
            mask = np.asarray(detector(thumb, mpp=mask_mpp), dtype=bool)
            if mask.shape != thumb.shape[:2]:
                raise TileSettingsError(
                    f"The tissue detector returned a mask of shape {mask.shape} for a thumbnail "
                    f"of shape {thumb.shape[:2]}; it must return one bool per thumbnail pixel."
                )
            self.tissue_mask = mask
            fraction = _tissue.grid_fraction(
                mask, self.grid_x, self.grid_y, extent, (width, height)
            )
            grid &= fraction >= self.tissue_fraction

        if self.roi_method in ("inside", "outside") and grid.size:
            cx, cy = np.meshgrid(self.grid_x + extent / 2, self.grid_y + extent / 2)
            inside = points_in_rois(np.stack([cx.ravel(), cy.ravel()], axis=1), self.rois)
            inside = inside.reshape(grid.shape)
            grid &= inside if self.roi_method == "inside" else ~inside
        self._set_grid(grid)

    def _set_grid(self, grid: np.ndarray) -> None:
        self.grid = grid
        rows, cols = np.nonzero(grid)  # row-major order
        self.grid_index = np.stack([rows, cols], axis=1).astype(np.int64)
        self.coords = np.stack([self.grid_x[cols], self.grid_y[rows]], axis=1).astype(np.int64)

    # ---------------------------------------------------------------- reading

    def _read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """uint8 RGB (h, w, 3) of ``size`` level pixels from level-0 ``location``."""
        try:
            return self._slide.read_region(location, level, size)
        except Exception as exc:  # a reader's library may raise anything on a damaged file
            raise SlideReadError(
                f"Cannot read slide {self.path} at level-0 (x, y) = {location}, level {level}, "
                f"size {size} ({self.reader_name}): {exc}. The file is probably corrupt; "
                "re-export it or exclude this slide."
            ) from None

    def _read_thumbnail(self, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
        width, height = self.dimensions
        downsample = max(width / size[0], height / size[1])
        level = self._slide.best_level_for_downsample(downsample)
        region = self._read_region((0, 0), level, self.levels[level].dimensions)
        image = Image.fromarray(rgba_to_rgb(region))
        if image.size != size:
            image = image.resize(size, resample)
        return np.asarray(image)

    def thumbnail(self, width: int = 512) -> Image.Image:
        """Return an RGB thumbnail ``width`` pixels wide, keeping the slide's aspect ratio."""
        slide_w, slide_h = self.dimensions
        size = (int(width), max(1, round(width * slide_h / slide_w)))
        return Image.fromarray(self._read_thumbnail(size, RESIZE_FILTER))

    def read_tile_at(self, x: int, y: int) -> np.ndarray:
        """Read the tile whose level-0 top-left corner is (x, y): uint8 (tile_px, tile_px, 3)."""
        size = (self.read_px, self.read_px)
        rgb = rgba_to_rgb(self._read_region((int(x), int(y)), self.level, size))
        if self.read_px != self.tile_px:
            image = Image.fromarray(rgb).resize((self.tile_px, self.tile_px), RESIZE_FILTER)
            rgb = np.asarray(image)
        return rgb

    def read_tiles(
        self, indices: Sequence[int] | np.ndarray, *, return_mask: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Read kept tiles by their index into :attr:`coords`.

        Args:
            indices: Tile indices (0 <= i < len(self)).
            return_mask: Also return which tiles pass the grayspace / whitespace filters.

        Returns:
            uint8 array (n, tile_px, tile_px, 3); with ``return_mask``, also a bool array (n,).

        Raises:
            IndexError: An index is out of range.
            SlideReadError: A region cannot be read.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"tile index out of range for {self.name} with {len(self)} tiles")
        tiles = np.empty((len(idx), self.tile_px, self.tile_px, 3), dtype=np.uint8)
        for run in self._strips(idx):
            self._read_strip(idx[run], tiles, run)
        if return_mask:
            return tiles, self.tile_filter(tiles)
        return tiles

    def _strips(self, idx: np.ndarray) -> list[np.ndarray]:
        """Group positions of ``idx`` into runs read with one region each.

        One region per tile costs more than the pixels (through OpenSlide, about 4 ms against
        under 2 ms per tile in strips), so neighbouring tiles of one grid row are read
        together. Only tiles whose level-0 offsets are whole level pixels are grouped, so each
        tile's pixels are exactly those of its own ``read_region``.
        """
        downsample = self.levels[self.level].downsample
        exact = float(downsample).is_integer()
        coords = self.coords[idx]
        runs: list[list[int]] = []
        for k in range(len(idx)):
            if runs and exact and len(runs[-1]) < _STRIP_TILES:
                first = coords[runs[-1][0]]
                prev = coords[runs[-1][-1]]
                dx = int(coords[k][0] - prev[0])
                same_row = coords[k][1] == first[1]
                if same_row and 0 < dx <= self.full_extract_px and dx % int(downsample) == 0:
                    runs[-1].append(k)
                    continue
            runs.append([k])
        return [np.asarray(r, dtype=np.int64) for r in runs]

    def _read_strip(self, idx: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
        """Read the tiles ``idx`` (one grid row, left to right) into ``out[positions]``."""
        x0, y0 = (int(v) for v in self.coords[idx[0]])
        if len(idx) == 1:
            out[positions[0]] = self.read_tile_at(x0, y0)
            return
        downsample = int(self.levels[self.level].downsample)
        offsets = (self.coords[idx, 0] - x0) // downsample
        width = int(offsets[-1]) + self.read_px
        strip = rgba_to_rgb(self._read_region((x0, y0), self.level, (width, self.read_px)))
        for pos, off in zip(positions, offsets):
            tile = strip[:, int(off) : int(off) + self.read_px]
            if self.read_px != self.tile_px:
                image = Image.fromarray(np.ascontiguousarray(tile))
                tile = np.asarray(image.resize((self.tile_px, self.tile_px), RESIZE_FILTER))
            out[pos] = tile

    def read_tile(self, i: int) -> np.ndarray:
        """Read kept tile ``i`` as uint8 (tile_px, tile_px, 3)."""
        return self.read_tiles([i])[0]  # type: ignore[index]

    def tile_filter(self, tiles: np.ndarray) -> np.ndarray:
        """Bool array (n,): which of these tiles pass this slide's grayspace/whitespace filters."""
        return _tissue.tile_filter_mask(
            tiles,
            self.grayspace_fraction,
            self.grayspace_threshold,
            self.whitespace_fraction,
            self.whitespace_threshold,
        )

    def filter_tiles(self, batch_size: int = 64, progress: bool = False) -> int:
        """Read every kept tile and drop from the grid those failing the pixel filters.

        Afterwards :attr:`coords`, :attr:`grid` and ``len(self)`` describe only tiles that pass.

        Args:
            batch_size: Tiles read at a time.
            progress: Show a progress bar.

        Returns:
            The number of tiles removed.
        """
        keep = np.ones(len(self), dtype=bool)
        for start in self._batches(batch_size, progress, "Filtering"):
            stop = min(start + batch_size, len(self))
            _, keep[start:stop] = self.read_tiles(np.arange(start, stop), return_mask=True)
        grid = self.grid.copy()
        rows, cols = self.grid_index[~keep].T
        grid[rows, cols] = False
        self._set_grid(grid)
        return int((~keep).sum())

    def _batches(self, batch_size: int, progress: bool, verb: str) -> Iterator[int]:
        """Yield the first index of each batch, advancing a per-tile progress bar."""
        from tqdm.auto import tqdm

        step = max(1, int(batch_size))
        desc = f"{verb} {self.name}"
        bar = tqdm(total=len(self), desc=desc, unit="tile", leave=False, disable=not progress)
        try:
            for start in range(0, len(self), step):
                yield start
                bar.update(min(step, len(self) - start))
        finally:
            bar.close()

    # ---------------------------------------------------------------- export

    def extract_tiles(
        self,
        outdir: str | Path,
        img_format: str = "jpg",
        quality: int = 95,
        *,
        batch_size: int = 64,
        progress: bool = True,
    ) -> Path:
        """Write the tiles passing every filter to ``<outdir>/<safe name>.tfrecords``.

        Records are slideflow's: ``slide`` (this slide's name), ``image_raw`` (JPEG or PNG),
        ``loc_x`` / ``loc_y`` (level-0 tile **centre**: top-left + full_extract_px // 2). The
        file and its ``.index.npz`` are written atomically.

        Args:
            outdir: Output folder (created if needed).
            img_format: ``"jpg"`` or ``"png"``.
            quality: JPEG quality.
            batch_size: Tiles read at a time.
            progress: Show a progress bar.

        Returns:
            The path of the TFRecord.
        """
        path = Path(outdir) / f"{safe_name(self.name)}.tfrecords"
        half = self.full_extract_px // 2
        with TFRecordWriter(path) as writer:
            for start in self._batches(batch_size, progress, "Extracting"):
                stop = min(start + batch_size, len(self))
                tiles, keep = self.read_tiles(np.arange(start, stop), return_mask=True)
                for offset in np.flatnonzero(keep):
                    x, y = self.coords[start + offset]
                    image = encode_image(tiles[offset], img_format, quality)
                    writer.write_tile(self.name, image, int(x) + half, int(y) + half)
        return path

    # ---------------------------------------------------------------- protocol

    def __len__(self) -> int:
        """Return the number of kept tiles."""
        return len(self.coords)

    def __getstate__(self) -> dict[str, Any]:
        # A reader's file handle cannot be pickled: each process reopens the slide lazily,
        # with the same reader.
        state = self.__dict__.copy()
        state["_reader"] = None
        return state

    def close(self) -> None:
        """Close the slide (reopened automatically on the next read)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> WSI:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"WSI(name={self.name!r}, reader={self.reader_name!r}, "
            f"dimensions={self.dimensions}, mpp={self.mpp:g}, "
            f"tile_px={self.tile_px}, tile_um={self.tile_um!r}, level={self.level}, "
            f"tiles={len(self)})"
        )
