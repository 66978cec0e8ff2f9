"""The ``npz`` bag writer: ``<slide>.npz`` holding ``features`` (N, F), ``coords`` (N, 2)
level-0 top-left corners, and the tile geometry as scalars. Public histobag API only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from histobag.geometry import TileGeometry
from histobag.io.bag_writers import BagWriter


class NpzBagWriter(BagWriter):
    """One uncompressed NumPy archive per slide."""

    name = "npz"
    coordinates = "top_left"

    def files(self, slide: str) -> list[Path]:
        """One file, so it is also the one marking the bag complete."""
        return [self.outdir / f"{slide}.npz"]

    def write_files(
        self,
        slide: str,
        features: np.ndarray,
        coords: np.ndarray,
        geometry: TileGeometry,
        paths: list[Path],
    ) -> None:
        """Arrays and geometry into the temporary path histobag gives (renamed by histobag)."""
        with open(paths[0], "wb") as handle:  # exactly this path: np.savez("x") adds ".npz"
            np.savez(
                handle,
                features=features,
                coords=coords,
                tile_px=geometry.tile_px,
                tile_um=geometry.tile_um,
                extent_px=geometry.extent_px,
            )

    def read(self, slide: str) -> tuple[np.ndarray, np.ndarray]:
        """float32 (N, F) features and int64 (N, 2) top-left corners."""
        with np.load(self.files(slide)[0]) as data:
            return data["features"].astype(np.float32), data["coords"].astype(np.int64)
