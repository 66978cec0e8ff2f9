"""The ``npyslide`` reader. Public histobag API only.

A ``.npyslide`` file is a NumPy ``.npz`` archive (compressed or not) holding ``level_0``,
``level_1``, ... (uint8 RGB arrays ``(height, width, 3)``, level 0 the largest) and ``mpp``
(level-0 microns per pixel; ``0`` when unknown).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from histobag.slide.readers import SlideReader


def write_npyslide(
    path: str | Path, levels: list[np.ndarray], mpp: float | None, compress: bool = True
) -> Path:
    """Write ``levels`` (uint8 RGB, level 0 first) and ``mpp`` as a ``.npyslide`` file."""
    arrays = {f"level_{i}": np.ascontiguousarray(level) for i, level in enumerate(levels)}
    save = np.savez_compressed if compress else np.savez
    with open(path, "wb") as handle:  # a handle: np.savez would add ".npz" to a name
        save(handle, mpp=np.float64(mpp or 0.0), **arrays)
    return Path(path)


class NpySlideReader(SlideReader):
    """A ``.npyslide`` pyramid; each level is decoded on first use and kept in memory."""

    def __init__(self, source: str) -> None:
        # Any exception here means "cannot open": histobag then tries the next reader.
        if not zipfile.is_zipfile(source):
            raise ValueError(f"{source} is not a .npyslide file (not a NumPy .npz archive)")
        self.archive = np.load(source, allow_pickle=False)
        names = sorted(
            (n for n in self.archive.files if n.startswith("level_")),
            key=lambda n: int(n.split("_", 1)[1]),
        )
        if not names or "mpp" not in self.archive.files:
            self.archive.close()
            raise ValueError(f"{source} is not a .npyslide file (no level_0 or mpp)")
        shapes = [_array_shape(source, name) for name in names]
        width0, height0 = shapes[0][1], shapes[0][0]
        self.source = source
        self.dimensions = (width0, height0)
        self.level_dimensions = tuple((s[1], s[0]) for s in shapes)
        # OpenSlide's rule: the mean of the width and height ratios.
        self.level_downsamples = tuple(
            (width0 / w + height0 / h) / 2 for w, h in self.level_dimensions
        )
        mpp = float(self.archive["mpp"])
        self.mpp = mpp if mpp > 0 and math.isfinite(mpp) else None
        self.magnification = None
        self.vendor = "npyslide"
        self.properties = {"npyslide.levels": str(len(names))}
        if self.mpp is not None:
            self.properties["openslide.mpp-x"] = self.properties["openslide.mpp-y"] = str(mpp)
        self.version = np.__version__
        self.level_names = names
        self.decoded: dict[int, np.ndarray] = {}

    def level_pixels(self, level: int) -> np.ndarray:
        """All pixels of a level (decoded on first use, then kept)."""
        if level not in self.decoded:
            self.decoded[level] = self.archive[self.level_names[level]]
        return self.decoded[level]

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """The region, white where it lies beyond the level's edge. The level-0 location
        maps to the nearest level pixel, so ``round(x * downsample)`` reads level pixel ``x``."""
        downsample = self.level_downsamples[level]
        x0 = math.floor(location[0] / downsample + 0.5)
        y0 = math.floor(location[1] / downsample + 0.5)
        width, height = size
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        pixels = self.level_pixels(level)
        left, top = max(x0, 0), max(y0, 0)
        right = min(x0 + width, pixels.shape[1])
        bottom = min(y0 + height, pixels.shape[0])
        if right > left and bottom > top:
            out[top - y0 : bottom - y0, left - x0 : right - x0] = pixels[top:bottom, left:right]
        return out

    def close(self) -> None:
        """Close the archive and drop the decoded levels."""
        self.decoded.clear()
        self.archive.close()


def _array_shape(source: str, name: str) -> tuple[int, ...]:
    """Shape of one array of the archive, read from its header (nothing is decoded)."""
    with zipfile.ZipFile(source) as archive, archive.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    if dtype != np.uint8 or len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
        raise ValueError(f"{source}: {name} must be uint8 (height, width, 3), got {dtype} {shape}")
    return shape
