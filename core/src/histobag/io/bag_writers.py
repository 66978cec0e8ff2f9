"""Feature-bag files: one bag per slide, in a format MIL tools read.

Writers registered by core (through the bag-writer hook, like any pack's):

- ``pt`` (slideflow): ``<slide>.pt`` float32 tensor (N, F) and ``<slide>.index.npz`` with
  ``arr_0`` (N, 2) int64 tile **centres** at level 0.
- ``h5`` (CLAM/TRIDENT): ``<slide>.h5`` with datasets ``features`` (N, F) and ``coords`` (N, 2)
  level-0 **top-left** corners; attributes ``patch_size`` (level-0 extent), ``patch_level``,
  ``mpp``, ``tile_px``, ``tile_um``.
- ``safetensors``: ``<slide>.safetensors`` with ``features`` (N, F), ``coords`` (N, 2) top-left
  and the same metadata as strings.

Every file is written under a temporary name in the same folder and renamed when complete, so a
bag exists only when it is whole (DESIGN principle 5). A write that fails for lack of space (or
on a read-only folder) raises :class:`~histobag.errors.StorageError` naming the folder and the
space needed, and leaves no temporary file behind.
"""

from __future__ import annotations

import io
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from histobag.errors import ConfigError, HistobagError
from histobag.files import TMP_PREFIX, atomic_files
from histobag.geometry import TileGeometry, top_left_to_centres
from histobag.plugins import bag_writer_specs


class BagWriter(ABC):
    """Writes and reads one bag per slide in one format.

    Subclasses set :attr:`name`, :attr:`coordinates` (the convention stored in their files:
    ``"top_left"`` or ``"centre"``) and implement :meth:`files`, :meth:`write` and :meth:`read`.
    Register a subclass with the ``histobag_bag_writers`` hook.
    """

    name: ClassVar[str]
    coordinates: ClassVar[str] = "top_left"

    def __init__(self, outdir: str | os.PathLike[str]) -> None:
        self.outdir = Path(outdir)

    @abstractmethod
    def files(self, slide: str) -> list[Path]:
        """The files making up ``slide``'s bag; the LAST one is renamed into place last."""

    @abstractmethod
    def _write(
        self,
        slide: str,
        features: np.ndarray,
        coords: np.ndarray,
        geometry: TileGeometry,
        tmp_paths: list[Path],
    ) -> None:
        """Write the bag's files to ``tmp_paths`` (same order as :meth:`files`)."""

    @abstractmethod
    def read(self, slide: str) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, F) float32, coords (N, 2) int64 in :attr:`coordinates` convention)."""

    def write(
        self, slide: str, features: np.ndarray, top_left: np.ndarray, geometry: TileGeometry
    ) -> list[Path]:
        """Write a whole bag atomically; ``top_left`` are level-0 tile corners (N, 2)."""
        features = np.asarray(features, dtype=np.float32)
        top_left = np.asarray(top_left, dtype=np.int64).reshape(-1, 2)
        if len(features) != len(top_left):
            raise HistobagError(
                f"{slide}: {len(features)} feature rows but {len(top_left)} coordinates"
            )
        coords = (
            top_left_to_centres(top_left, geometry.extent_px)
            if self.coordinates == "centre"
            else top_left
        )
        finals = self.files(slide)
        # The serialised bag is about the arrays' size; the slack covers headers and zip entries.
        needed = features.nbytes + coords.nbytes + 64 * 1024
        with atomic_files(finals, needed) as tmps:
            self._write(slide, features, coords, geometry, tmps)
        return finals

    def is_complete(self, slide: str, num_features: int | None = None) -> bool:
        """Whether ``slide``'s bag is whole: all files exist and read back consistently."""
        if not all(path.is_file() for path in self.files(slide)):
            return False
        try:
            features, coords = self.read(slide)
        except Exception:  # any unreadable file means "not done"
            return False
        ok_shape = features.ndim == 2 and coords.shape == (len(features), 2)
        return ok_shape and (num_features is None or features.shape[1] == num_features)

    def slides(self) -> list[str]:
        """Slides with a bag file in :attr:`outdir` (complete or not)."""
        suffix = self.files("x")[-1].name[1:]
        return sorted(
            p.name[: -len(suffix)]
            for p in self.outdir.glob("*" + suffix)
            if not p.name.startswith(TMP_PREFIX)
        )


class PtBagWriter(BagWriter):
    """slideflow layout: ``<slide>.pt`` (N, F) float32 and ``<slide>.index.npz`` centres."""

    name = "pt"
    coordinates = "centre"

    def files(self, slide: str) -> list[Path]:
        """Index first, tensor last (the tensor's presence marks a whole bag)."""
        return [self.outdir / f"{slide}.index.npz", self.outdir / f"{slide}.pt"]

    def _write(self, slide, features, coords, geometry, tmp_paths) -> None:
        import torch

        index_tmp, pt_tmp = tmp_paths
        with open(index_tmp, "wb") as handle:  # np.savez would append .npz to a bare path
            np.savez(handle, arr_0=coords)
        # Serialised in memory and written with a plain write: torch's zip writer reports a
        # full disk as "unexpected pos", a plain write as OSError(ENOSPC).
        buffer = io.BytesIO()
        torch.save(torch.from_numpy(np.ascontiguousarray(features)), buffer)
        pt_tmp.write_bytes(buffer.getbuffer())

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
    """CLAM/TRIDENT layout: ``features`` and ``coords`` (top-left) datasets in ``<slide>.h5``."""

    name = "h5"

    def files(self, slide: str) -> list[Path]:
        """One file."""
        return [self.outdir / f"{slide}.h5"]

    def _write(self, slide, features, coords, geometry, tmp_paths) -> None:
        import h5py

        with h5py.File(tmp_paths[0], "w") as h5:
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
        import h5py

        with h5py.File(self.files(slide)[0], "r") as h5:
            return h5["features"][:], h5["coords"][:]


class SafetensorsBagWriter(BagWriter):
    """``<slide>.safetensors`` with ``features`` and ``coords`` (top-left) tensors."""

    name = "safetensors"

    def files(self, slide: str) -> list[Path]:
        """One file."""
        return [self.outdir / f"{slide}.safetensors"]

    def _write(self, slide, features, coords, geometry, tmp_paths) -> None:
        from safetensors.numpy import save

        metadata = {k: json.dumps(v) for k, v in geometry.to_dict().items()}
        metadata["coordinates"] = "top_left"
        tensors = {
            "features": np.ascontiguousarray(features),
            "coords": np.ascontiguousarray(coords),
        }
        # In memory, then a plain write: the Rust writer's I/O errors carry no errno.
        tmp_paths[0].write_bytes(save(tensors, metadata=metadata))

    def read(self, slide: str) -> tuple[np.ndarray, np.ndarray]:
        """Features and top-left coordinates."""
        from safetensors.numpy import load_file

        data = load_file(str(self.files(slide)[0]))
        return data["features"], data["coords"]


def get_writer(name: str, outdir: str | os.PathLike[str]) -> BagWriter:
    """Instantiate the registered bag writer ``name`` for ``outdir``."""
    specs = bag_writer_specs()
    if name not in specs:
        raise ConfigError(
            f"Unknown bag writer {name!r}. Available: {', '.join(sorted(specs))}. "
            "A pack can add writers through the histobag_bag_writers hook."
        )
    return specs[name].load()(outdir)
