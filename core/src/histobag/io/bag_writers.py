"""Feature-bag files: one bag per slide, in a format MIL tools read, and the writer API.

Writers registered by core (through the bag-writer hook, like any pack's):

- ``pt`` (slideflow): ``<slide>.pt`` float32 tensor (N, F) and ``<slide>.index.npz`` with
  ``arr_0`` (N, 2) int64 tile **centres** at level 0.
- ``h5`` (CLAM/TRIDENT): ``<slide>.h5`` with datasets ``features`` (N, F) and ``coords`` (N, 2)
  level-0 **top-left** corners; attributes ``patch_size`` (level-0 extent), ``patch_level``,
  ``mpp``, ``tile_px``, ``tile_um``. Needs the ``histobag[h5]`` extra (h5py).
- ``safetensors``: ``<slide>.safetensors`` with ``features`` (N, F), ``coords`` (N, 2) top-left
  and the same metadata as strings.

A third-party format subclasses :class:`BagWriter` and implements its public methods only
(:attr:`~BagWriter.name`, :attr:`~BagWriter.coordinates`, :meth:`~BagWriter.files`,
:meth:`~BagWriter.write_files`, :meth:`~BagWriter.read`); ``docs/plugins.md`` shows a whole
writer package. The base class's :meth:`~BagWriter.write` does the rest: it checks the arrays,
converts the coordinates to the writer's convention, and writes every file under a temporary
name in the same folder (:func:`histobag.files.atomic_files`), renaming them when all are
complete, the last one last, so a bag exists only when it is whole (DESIGN principle 5). A
write that fails for lack of space (or on a read-only folder) raises
:class:`~histobag.errors.StorageError` naming the folder and the space needed, and leaves no
temporary file behind.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from histobag.errors import ConfigError, DuplicateExtractorError, HistobagError, PluginError
from histobag.files import TMP_PREFIX, atomic_files
from histobag.geometry import COORDINATE_CONVENTIONS, TileGeometry, top_left_to_centres
from histobag.optional import require
from histobag.plugins import bag_writer_specs, get_plugin_manager

__all__ = [
    "BagWriter",
    "H5BagWriter",
    "PtBagWriter",
    "SafetensorsBagWriter",
    "get_writer",
]


class BagWriter(ABC):
    """Writes and reads one bag per slide in one file format.

    A subclass sets two class attributes and implements three methods; histobag calls them,
    and nothing else of the subclass:

    - :attr:`name`: the registered name users pass as ``writer=``.
    - :attr:`coordinates`: the convention the files store, ``"top_left"`` or ``"centre"``.
    - :meth:`files`: the paths of a slide's bag; the **last** one marks the bag complete.
    - :meth:`write_files`: write one bag to the temporary paths it is given.
    - :meth:`read`: read one bag back as float32 (N, F) features and int64 (N, 2) coordinates.

    Register the subclass with the ``histobag_bag_writers`` hook (a :class:`BagWriterSpec`
    naming it as ``"module:Class"``). histobag instantiates it with the bags folder
    (:attr:`outdir`) and calls :meth:`write` (do not override it: it does the checks, the
    coordinate conversion and the atomic renames).

    Attributes:
        outdir: The bags folder this writer writes into and reads from.
    """

    #: Registered name, the one users pass as ``writer=`` (same as the spec's name).
    name: ClassVar[str]
    #: Coordinate convention stored in the files: ``"top_left"`` (histobag's own, level-0
    #: top-left corners) or ``"centre"`` (level-0 tile centres, as slideflow stores them).
    coordinates: ClassVar[str] = "top_left"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Check the class attributes; adapt a writer written against the old private API."""
        super().__init_subclass__(**kwargs)
        if cls.coordinates not in COORDINATE_CONVENTIONS:
            raise PluginError(
                f"Bag writer {cls.__qualname__}: coordinates must be one of "
                f"{', '.join(COORDINATE_CONVENTIONS)}, got {cls.coordinates!r}."
            )
        if "_write" in cls.__dict__ and "write_files" not in cls.__dict__:
            # Before 0.3 writers implemented the private BagWriter._write (same arguments).
            warnings.warn(
                f"Bag writer {cls.__module__}.{cls.__qualname__} implements _write, which "
                "histobag 0.3 replaced by the public write_files(slide, features, coords, "
                "geometry, paths); _write will no longer be called from histobag 0.4. "
                "Rename the method to write_files.",
                DeprecationWarning,
                stacklevel=3,  # the class statement (through ABCMeta.__new__)
            )
            cls.write_files = _call_legacy_write  # type: ignore[method-assign]

    def __init__(self, outdir: str | os.PathLike[str]) -> None:
        self.outdir = Path(outdir)

    @abstractmethod
    def files(self, slide: str) -> list[Path]:
        """The files making up ``slide``'s bag, all in :attr:`outdir`.

        Args:
            slide: The slide's name, already safe as a file name.

        Returns:
            One or more paths. They are renamed into place in this order, so the **last**
            one exists only once every other file of the bag is complete: its presence marks
            a finished bag. :meth:`slides` lists the slides that have it, by its suffix.
        """

    @abstractmethod
    def write_files(
        self,
        slide: str,
        features: np.ndarray,
        coords: np.ndarray,
        geometry: TileGeometry,
        paths: list[Path],
    ) -> None:
        """Write one bag into ``paths``: temporary files that histobag renames afterwards.

        Args:
            slide: The slide's name (for metadata; the file names are already chosen).
            features: float32 (N, F), C-contiguous.
            coords: int64 (N, 2) level-0 (x, y), already in :attr:`coordinates` convention.
            geometry: Tile size (``tile_px``, ``tile_um``, level-0 ``extent_px``), ``mpp`` and
                pyramid ``level``, to store as metadata if the format has a place for it.
            paths: One existing, empty temporary file per entry of :meth:`files` (same order,
                same suffixes). Write each one in full at exactly that path (open it with
                ``"wb"``; ``np.savez`` given a bare path would append ``.npz``) and create no
                other file. Do not rename them: histobag renames them into place, the last one
                last, only after this method returns; if it raises, they are removed.
        """

    @abstractmethod
    def read(self, slide: str) -> tuple[np.ndarray, np.ndarray]:
        """Read ``slide``'s bag back.

        Returns:
            ``(features, coords)``: features as float32 (N, F), coords as int64 (N, 2) in
            :attr:`coordinates` convention, exactly what :meth:`write_files` received. Raise
            any exception if a file is missing or unreadable (the bag then counts as
            unfinished).
        """

    def write(
        self, slide: str, features: np.ndarray, top_left: np.ndarray, geometry: TileGeometry
    ) -> list[Path]:
        """Write a whole bag atomically (called by histobag; subclasses do not override it).

        Args:
            slide: The slide's safe name.
            features: (N, F) features, stored as float32.
            top_left: (N, 2) level-0 top-left tile corners, converted to :attr:`coordinates`.
            geometry: The slide's tile geometry.

        Returns:
            The bag's files (:meth:`files`), all in place.
        """
        features = np.ascontiguousarray(features, dtype=np.float32)
        top_left = np.asarray(top_left, dtype=np.int64).reshape(-1, 2)
        if features.ndim != 2:
            raise HistobagError(f"{slide}: features must be (N, F), got shape {features.shape}")
        if len(features) != len(top_left):
            raise HistobagError(
                f"{slide}: {len(features)} feature rows but {len(top_left)} coordinates"
            )
        coords = (
            top_left_to_centres(top_left, geometry.extent_px)
            if self.coordinates == "centre"
            else top_left
        )
        coords = np.ascontiguousarray(coords, dtype=np.int64)
        finals = list(self.files(slide))
        if not finals:
            raise PluginError(f"Bag writer {self.name!r}: files({slide!r}) returned no path.")
        # The serialised bag is about the arrays' size; the slack covers headers and zip entries.
        needed = features.nbytes + coords.nbytes + 64 * 1024
        with atomic_files(finals, needed) as tmps:
            self.write_files(slide, features, coords, geometry, tmps)
            missing = [final.name for tmp, final in zip(tmps, finals) if not tmp.is_file()]
            if missing:
                raise PluginError(
                    f"Bag writer {self.name!r} did not write {', '.join(missing)} for {slide}: "
                    "write_files must write each path it is given, in place."
                )
        return finals

    def is_complete(self, slide: str, num_features: int | None = None) -> bool:
        """Whether ``slide``'s bag is whole: all files exist and read back consistently.

        Raises:
            PluginError: :meth:`read` returned something else than float32 (N, F) features
                and int64 (N, 2) coordinates (a bug of the writer, not of the bag).
        """
        if not all(path.is_file() for path in self.files(slide)):
            return False
        try:
            features, coords = self.read(slide)
        except Exception:  # any unreadable file means "not done"
            return False
        self.check_read(slide, features, coords)
        return coords.shape[0] == len(features) and (
            num_features is None or features.shape[1] == num_features
        )

    def check_read(self, slide: str, features: Any, coords: Any) -> None:
        """Raise :class:`PluginError` unless ``(features, coords)`` keep :meth:`read`'s contract.

        Writer authors can call it in their tests on what :meth:`read` returns.
        """
        ok = (
            isinstance(features, np.ndarray)
            and isinstance(coords, np.ndarray)
            and features.dtype == np.float32
            and features.ndim == 2
            and coords.dtype == np.int64
            and coords.ndim == 2
            and coords.shape[1] == 2
        )
        if not ok:
            raise PluginError(
                f"Bag writer {self.name!r}: read({slide!r}) must return float32 (N, F) features "
                f"and int64 (N, 2) coordinates as numpy arrays, got {_describe(features)} and "
                f"{_describe(coords)}."
            )

    def slides(self) -> list[str]:
        """Slides with a bag file in :attr:`outdir` (complete or not).

        Found by the suffix of the last of :meth:`files` (``<slide><suffix>``); override when
        the last file is named differently.
        """
        suffix = self.files("x")[-1].name[1:]
        return sorted(
            p.name[: -len(suffix)]
            for p in self.outdir.glob("*" + suffix)
            if not p.name.startswith(TMP_PREFIX)
        )


def _call_legacy_write(
    self: BagWriter,
    slide: str,
    features: np.ndarray,
    coords: np.ndarray,
    geometry: TileGeometry,
    paths: list[Path],
) -> None:
    """``write_files`` of a writer that still implements the pre-0.3 ``_write``."""
    self._write(slide, features, coords, geometry, paths)  # type: ignore[attr-defined]


def _describe(value: Any) -> str:
    """``float64 (3, 4)`` for an array, the type name otherwise (for error messages)."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {value.shape}"
    return type(value).__name__


class PtBagWriter(BagWriter):
    """slideflow layout: ``<slide>.pt`` (N, F) float32 and ``<slide>.index.npz`` centres."""

    name = "pt"
    coordinates = "centre"

    def files(self, slide: str) -> list[Path]:
        """Index first, tensor last (the tensor's presence marks a whole bag)."""
        return [self.outdir / f"{slide}.index.npz", self.outdir / f"{slide}.pt"]

    def write_files(
        self,
        slide: str,
        features: np.ndarray,
        coords: np.ndarray,
        geometry: TileGeometry,
        paths: list[Path],
    ) -> None:
        """``arr_0`` centres into the index, the features as a torch tensor."""
        import torch

        index_path, pt_path = paths
        with open(index_path, "wb") as handle:  # np.savez would append .npz to a bare path
            np.savez(handle, arr_0=coords)
        # Serialised in memory and written with a plain write: torch's zip writer reports a
        # full disk as "unexpected pos", a plain write as OSError(ENOSPC).
        buffer = io.BytesIO()
        torch.save(torch.from_numpy(features), buffer)
        pt_path.write_bytes(buffer.getbuffer())

    def read(self, slide: str) -> tuple[np.ndarray, np.ndarray]:
        """Features and tile centres."""
        import torch

        index, pt = self.files(slide)
        features = torch.load(pt, map_location="cpu", weights_only=True, mmap=True)
        with np.load(index) as npz:
            coords = npz["arr_0"]
        return features.numpy(), coords

    def slides(self) -> list[str]:
        """Slides with a ``.pt`` bag."""
        return sorted(p.stem for p in self.outdir.glob("*.pt") if not p.name.startswith(TMP_PREFIX))


class H5BagWriter(BagWriter):
    """CLAM/TRIDENT layout: ``features`` and ``coords`` (top-left) datasets in ``<slide>.h5``.

    Needs h5py, from the ``histobag[h5]`` extra.
    """

    name = "h5"

    def files(self, slide: str) -> list[Path]:
        """One file."""
        return [self.outdir / f"{slide}.h5"]

    def write_files(
        self,
        slide: str,
        features: np.ndarray,
        coords: np.ndarray,
        geometry: TileGeometry,
        paths: list[Path],
    ) -> None:
        """Both datasets, the geometry as attributes of the file and of ``coords``."""
        h5py = require("h5py", extra="h5", purpose="the h5 bag writer")
        with h5py.File(paths[0], "w") as h5:
            h5.create_dataset("features", data=features)
            dset = h5.create_dataset("coords", data=coords)
            attrs = {
                "patch_size": geometry.extent_px,
                "patch_level": geometry.level,
                "patch_size_level0": geometry.extent_px,
                "tile_px": geometry.tile_px,
                "tile_um": geometry.tile_um,
                "mpp": geometry.mpp if geometry.mpp is not None else float("nan"),
                "coordinates": "top_left",
                "name": slide,
            }
            for key, value in attrs.items():
                dset.attrs[key] = value
                h5.attrs[key] = value

    def read(self, slide: str) -> tuple[np.ndarray, np.ndarray]:
        """Features and top-left coordinates."""
        h5py = require("h5py", extra="h5", purpose="the h5 bag writer")
        with h5py.File(self.files(slide)[0], "r") as h5:
            return h5["features"][:], h5["coords"][:]


class SafetensorsBagWriter(BagWriter):
    """``<slide>.safetensors`` with ``features`` and ``coords`` (top-left) tensors."""

    name = "safetensors"

    def files(self, slide: str) -> list[Path]:
        """One file."""
        return [self.outdir / f"{slide}.safetensors"]

    def write_files(
        self,
        slide: str,
        features: np.ndarray,
        coords: np.ndarray,
        geometry: TileGeometry,
        paths: list[Path],
    ) -> None:
        """Both tensors, the geometry as JSON strings in the metadata."""
        from safetensors.numpy import save

        metadata = {k: json.dumps(v) for k, v in geometry.to_dict().items()}
        metadata["coordinates"] = "top_left"
        # In memory, then a plain write: the Rust writer's I/O errors carry no errno.
        paths[0].write_bytes(save({"features": features, "coords": coords}, metadata=metadata))

    def read(self, slide: str) -> tuple[np.ndarray, np.ndarray]:
        """Features and top-left coordinates."""
        from safetensors.numpy import load_file

        data = load_file(str(self.files(slide)[0]))
        return data["features"], data["coords"]


def get_writer(name: str, outdir: str | os.PathLike[str]) -> BagWriter:
    """Instantiate the registered bag writer ``name`` for ``outdir``."""
    specs = bag_writer_specs()
    clash = get_plugin_manager().clash("bag writer", name)
    if name not in specs and clash is not None:
        raise DuplicateExtractorError(clash.error.partition(": ")[2] or clash.error)
    if name not in specs:
        raise ConfigError(
            f"Unknown bag writer {name!r}. Available: {', '.join(sorted(specs))}. "
            "A pack can add writers through the histobag_bag_writers hook."
        )
    return specs[name].load()(outdir)
