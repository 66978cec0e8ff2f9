"""Placing map points on a square grid: the mosaic's cell → tile assignment (no images).

Strict mode gives each grid cell one of the points lying inside it. Expanded mode then lets
each cell left empty take an unused point within ``leniency`` cell widths of its centre,
nearest pairs first. A point is never used twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from histobag.errors import HistobagError

__all__ = ["TILE_SELECT", "GridAssignment", "assign_grid"]

#: How a cell picks among its points: the first (lowest index), the nearest to the cell's
#: centre, or the one whose features are nearest the mean features of the cell's points.
TILE_SELECT = ("first", "nearest", "centroid")


@dataclass(frozen=True)
class GridAssignment:
    """Which point fills which grid cell.

    Attributes:
        num_x, num_y: Grid size in cells (columns, rows); row 0 is at the bottom (lowest y).
        origin: Map coordinates of the grid's lower-left corner.
        cell_size: Side of a (square) cell in map units.
        cells: (k, 2) int (column, row) of the filled cells.
        points: (k,) int index of the point filling each of ``cells``.
        expanded: (k,) bool: filled by expanded mode (the point lies outside the cell).
    """

    num_x: int
    num_y: int
    origin: tuple[float, float]
    cell_size: float
    cells: np.ndarray
    points: np.ndarray
    expanded: np.ndarray

    def cell_centres(self, cells: np.ndarray | None = None) -> np.ndarray:
        """Map coordinates (k, 2) of the centres of ``cells`` (default: the filled ones)."""
        cells = self.cells if cells is None else np.asarray(cells)
        return np.asarray(self.origin) + (cells + 0.5) * self.cell_size

    def cell_of(self, xy: np.ndarray) -> np.ndarray:
        """(n, 2) (column, row) of the cell holding each point (clipped to the grid)."""
        raw = np.floor((np.asarray(xy, float) - np.asarray(self.origin)) / self.cell_size)
        return np.clip(raw, 0, [self.num_x - 1, self.num_y - 1]).astype(np.int64)

    def __len__(self) -> int:
        """Number of filled cells."""
        return len(self.points)


def _grid_geometry(xy: np.ndarray, num_x: int) -> tuple[tuple[float, float], float, int]:
    lo = xy.min(axis=0)
    hi = xy.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    # a hair of margin so the largest point falls inside the last cell, not on its edge
    cell = float(span[0] * (1 + 1e-6) / num_x) if span[0] > 1e-9 else float(span[1] / num_x)
    cell = max(cell, 1e-9)
    num_y = max(1, math.ceil(span[1] * (1 + 1e-6) / cell))
    return (float(lo[0]), float(lo[1])), cell, num_y


def _centroid_scores(features: np.ndarray, cell_id: np.ndarray, n_cells: int) -> np.ndarray:
    """Squared distance of each point's features to the mean features of its cell."""
    from scipy import sparse

    n = len(cell_id)
    counts = np.bincount(cell_id, minlength=n_cells).astype(np.float64)
    member = sparse.csr_matrix((np.ones(n, np.float32), (cell_id, np.arange(n))), (n_cells, n))
    means = np.asarray(member @ features, dtype=np.float32) / np.maximum(counts, 1)[:, None]
    scores = np.empty(n, np.float64)
    for start in range(0, n, 16384):  # chunks bound the temporary (chunk, F) difference
        stop = min(n, start + 16384)
        diff = features[start:stop] - means[cell_id[start:stop]]
        scores[start:stop] = np.einsum("ij,ij->i", diff, diff)
    return scores


def assign_grid(
    xy: np.ndarray,
    num_tiles_x: int = 50,
    *,
    tile_select: str = "nearest",
    expanded: bool = False,
    leniency: float = 1.5,
    features: np.ndarray | None = None,
    max_candidates: int = 32,
) -> GridAssignment:
    """Assign map points to the cells of a square grid spanning them.

    Args:
        xy: (n, 2) map coordinates.
        num_tiles_x: Cells across; rows follow from the map's aspect ratio (square cells).
        tile_select: ``"first"``, ``"nearest"`` or ``"centroid"`` (needs ``features``).
        expanded: Let empty cells take an unused point within ``leniency`` cell widths of
            their centre.
        leniency: Search radius of expanded mode, in cell widths.
        features: (n, F) point features, for ``tile_select="centroid"``.
        max_candidates: Expanded mode considers the nearest this-many unused points per
            empty cell (bounds time and memory on dense maps).
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise HistobagError(f"xy must be (n, 2), got {xy.shape}")
    if tile_select not in TILE_SELECT:
        raise HistobagError(f"tile_select must be one of {TILE_SELECT}, not {tile_select!r}")
    if num_tiles_x < 1:
        raise HistobagError("num_tiles_x must be >= 1")
    empty = np.zeros((0, 2), np.int64)
    if not len(xy):
        return GridAssignment(num_tiles_x, 1, (0.0, 0.0), 1.0, empty, empty[:, 0], empty[:, 0] > 0)
    origin, cell, num_y = _grid_geometry(xy, num_tiles_x)
    partial = GridAssignment(num_tiles_x, num_y, origin, cell, empty, empty[:, 0], empty[:, 0] > 0)
    cols_rows = partial.cell_of(xy)
    cell_id = cols_rows[:, 1] * num_tiles_x + cols_rows[:, 0]
    n_cells = num_tiles_x * num_y

    if tile_select == "first":
        score = np.arange(len(xy), dtype=np.float64)
    elif tile_select == "nearest":
        score = ((xy - partial.cell_centres(cols_rows)) ** 2).sum(axis=1)
    else:
        if features is None or len(features) != len(xy):
            raise HistobagError("tile_select='centroid' needs the points' features.")
        score = _centroid_scores(np.asarray(features, np.float32), cell_id, n_cells)
    order = np.lexsort((np.arange(len(xy)), score, cell_id))
    filled_ids, first = np.unique(cell_id[order], return_index=True)
    points = order[first]
    cells = np.stack([filled_ids % num_tiles_x, filled_ids // num_tiles_x], axis=1)
    flags = np.zeros(len(points), bool)

    if expanded and leniency > 0:
        extra_cells, extra_points = _expand(
            xy, partial, filled_ids, points, leniency, max_candidates
        )
        if len(extra_points):
            cells = np.concatenate([cells, extra_cells])
            points = np.concatenate([points, extra_points])
            flags = np.concatenate([flags, np.ones(len(extra_points), bool)])
    return GridAssignment(num_tiles_x, num_y, origin, cell, cells, points, flags)


def _expand(
    xy: np.ndarray,
    grid: GridAssignment,
    filled_ids: np.ndarray,
    used: np.ndarray,
    leniency: float,
    max_candidates: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy nearest-first filling of empty cells with unused points within the radius."""
    from scipy.spatial import cKDTree

    n_cells = grid.num_x * grid.num_y
    is_empty = np.ones(n_cells, bool)
    is_empty[filled_ids] = False
    empty_ids = np.flatnonzero(is_empty)
    free = np.ones(len(xy), bool)
    free[used] = False
    free_idx = np.flatnonzero(free)
    if not len(empty_ids) or not len(free_idx):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    empty_cells = np.stack([empty_ids % grid.num_x, empty_ids // grid.num_x], axis=1)
    centres = grid.cell_centres(empty_cells)
    radius = leniency * grid.cell_size
    tree = cKDTree(xy[free_idx])
    k = min(max_candidates, len(free_idx))
    dist, nearest = tree.query(centres, k=k, distance_upper_bound=radius)
    dist, nearest = dist.reshape(len(centres), k), nearest.reshape(len(centres), k)
    cell_rows, slot = np.nonzero(np.isfinite(dist) & (dist <= radius))
    if not len(cell_rows):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    pair_dist = dist[cell_rows, slot]
    pair_point = free_idx[nearest[cell_rows, slot]]
    out_cells, out_points = [], []
    cell_done = np.zeros(len(centres), bool)
    point_done = np.zeros(len(xy), bool)
    for p in np.lexsort((pair_point, cell_rows, pair_dist)):  # nearest pairs first
        c, q = cell_rows[p], pair_point[p]
        if cell_done[c] or point_done[q]:
            continue
        cell_done[c] = point_done[q] = True
        out_cells.append(empty_cells[c])
        out_points.append(q)
    return np.asarray(out_cells, np.int64).reshape(-1, 2), np.asarray(out_points, np.int64)
