"""Putting one slide's features together: a ledger of its tiles and a store for feature rows.

The engine reads a slide's tiles in batches (in several processes, in any order), drops those
that fail the pixel filters and runs the model on the rest. Two small pieces keep that honest:

- :class:`TileLedger` accounts for every tile index of a slide **exactly once**, as *kept*
  (delivered with its features) or *filtered out*. A slide is finished when, and only when,
  every index has been accounted for; an index reported twice or out of range is an error
  naming the slide, never a short or padded bag.
- :class:`FeatureRows` holds the feature rows by tile index, in memory or in a spill file
  written with ``pwrite``. It never writes through a memory map: a write into a mapped page
  that the disk cannot back kills the process with SIGBUS, whereas ``pwrite`` raises
  ``OSError(ENOSPC)``, which becomes a clear error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from histobag.errors import TileAccountingError
from histobag.files import pwrite_all

__all__ = ["FeatureRows", "TileLedger"]


class TileLedger:
    """Accounts for each tile index of one slide exactly once.

    Args:
        slide: Name of the slide, for error messages.
        n_tiles: Number of tiles the source reported.

    Example:
        >>> ledger = TileLedger("s", 4)
        >>> ledger.filtered_out([1]); ledger.delivered([0, 2, 3])
        >>> ledger.complete, ledger.kept.tolist()
        (True, [True, False, True, True])
    """

    def __init__(self, slide: str, n_tiles: int) -> None:
        self.slide = slide
        self.n_tiles = int(n_tiles)
        self.accounted = np.zeros(self.n_tiles, dtype=bool)
        self.kept = np.zeros(self.n_tiles, dtype=bool)
        self.n_accounted = 0

    @property
    def complete(self) -> bool:
        """Whether every tile index has been accounted for."""
        return self.n_accounted == self.n_tiles

    def delivered(self, indices: np.ndarray | list[int]) -> None:
        """Tiles that passed the filters and whose features have been stored."""
        idx = self._claim(indices, "delivered")
        self.kept[idx] = True

    def filtered_out(self, indices: np.ndarray | list[int]) -> None:
        """Tiles dropped by the pixel filters (no features)."""
        self._claim(indices, "filtered out")

    def missing(self) -> np.ndarray:
        """Tile indices not yet accounted for."""
        return np.flatnonzero(~self.accounted)

    def check_complete(self) -> None:
        """Raise :class:`TileAccountingError` unless every tile has been accounted for."""
        if not self.complete:
            missing = self.missing()
            raise TileAccountingError(
                f"{self.slide}: {len(missing)} of {self.n_tiles} tiles were never accounted for "
                f"(first: {missing[:8].tolist()}); no bag was written. This is a bug in "
                "histobag or in a tile source: please report it."
            )

    def _claim(self, indices: np.ndarray | list[int], how: str) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if not len(idx):
            return idx
        bad = idx[(idx < 0) | (idx >= self.n_tiles)]
        if len(bad):
            raise TileAccountingError(
                f"{self.slide}: tile indices {bad[:8].tolist()} {how} are outside the slide's "
                f"{self.n_tiles} tiles; no bag was written."
            )
        ordered = np.sort(idx)
        twice_here = ordered[1:][np.diff(ordered) == 0]
        seen_before = ordered[self.accounted[ordered]]
        repeated = np.unique(np.concatenate([twice_here, seen_before]))
        if len(repeated):
            raise TileAccountingError(
                f"{self.slide}: tiles {repeated[:8].tolist()} were {how} more than once; "
                "no bag was written."
            )
        self.accounted[idx] = True
        self.n_accounted += len(idx)
        return idx


class FeatureRows:
    """Feature rows of one slide stored by tile index, in memory or in a spill file.

    Args:
        n_tiles: Rows the store can hold (tile indices ``0..n_tiles-1``).
        spill: A file to hold the rows (created empty by the caller, removed by :meth:`close`),
            or ``None`` to keep them in memory.
        n_features: Width of a row, when known before the first rows arrive (it shapes the
            result of a slide without kept tiles).
    """

    def __init__(
        self, n_tiles: int, spill: Path | None = None, n_features: int | None = None
    ) -> None:
        self.n_tiles = int(n_tiles)
        self.spill = spill
        self.n_features = n_features
        self._memory: np.ndarray | None = None
        self._fd: int | None = None

    def put(self, indices: np.ndarray, rows: np.ndarray) -> None:
        """Store ``rows`` (n, F) at tile ``indices`` (n,)."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        indices = np.asarray(indices, dtype=np.int64)
        if rows.ndim != 2 or len(rows) != len(indices):
            raise TileAccountingError(
                f"{len(indices)} tiles but features of shape {tuple(rows.shape)}"
            )
        if self.n_features is None:
            self.n_features = rows.shape[1]
        elif rows.shape[1] != self.n_features:
            raise TileAccountingError(
                f"feature rows of width {rows.shape[1]} after rows of width {self.n_features}"
            )
        if self.spill is None:
            if self._memory is None:
                self._memory = np.empty((self.n_tiles, self.n_features), dtype=np.float32)
            self._memory[indices] = rows
            return
        if self._fd is None:
            self._fd = os.open(self.spill, os.O_RDWR)
        row_bytes = self.n_features * 4
        for start, stop in _runs(indices):
            block = rows[start:stop]
            pwrite_all(self._fd, block.data, int(indices[start]) * row_bytes)

    def take(self, kept: np.ndarray) -> np.ndarray:
        """The rows of the tiles marked in ``kept`` (bool (n_tiles,)), in tile order."""
        idx = np.flatnonzero(kept)
        width = self.n_features or 0
        if not len(idx):
            return np.zeros((0, width), dtype=np.float32)
        if self._memory is not None:
            return np.ascontiguousarray(self._memory[idx])
        out = np.empty((len(idx), width), dtype=np.float32)
        row_bytes = width * 4
        assert self._fd is not None
        for start, stop in _runs(idx):
            size = (stop - start) * row_bytes
            data = os.pread(self._fd, size, int(idx[start]) * row_bytes)
            if len(data) != size:
                raise TileAccountingError(
                    f"the feature spill file {self.spill} is shorter than the rows written to it"
                )
            out[start:stop] = np.frombuffer(data, dtype=np.float32).reshape(-1, width)
        return out

    def close(self) -> None:
        """Release the rows (and remove the spill file)."""
        self._memory = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.spill is not None:
            self.spill.unlink(missing_ok=True)


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` positions in ``indices`` where the values are consecutive integers."""
    if not len(indices):
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(indices)]])
    return list(zip(starts.tolist(), stops.tolist()))
