"""Generated slide bags for slide-encoder tests: a tissue-shaped set of tile positions.

Real bags are not a full rectangle: tissue is one or more blobs with holes (fat, tears) and
the background between them is skipped. :func:`tissue_coords` gives level-0 top-left corners
of such a tile set, in reading order as histobag's tiler emits them, with the grid origin at
an arbitrary offset; :func:`generated_bag` adds features.
"""

from __future__ import annotations

import numpy as np


def tissue_coords(
    n_tiles: int = 2000, *, extent_px: int = 512, seed: int = 0, origin: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """At least ``n_tiles`` level-0 ``(x, y)`` top-left corners (int64, (N, 2)), N ≤ 1.3 x
    n_tiles: two elliptic tissue pieces with holes on a grid of pitch ``extent_px``,
    shifted by ``origin`` (a slide's tiling does not start at 0)."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_tiles * 2.2)))
    rows, cols = np.mgrid[0:side, 0 : 2 * side]
    centres = [
        (side * 0.5, side * 0.55, side * 0.45, side * 0.5),
        (side * 0.5, side * 1.5, 0.4 * side, 0.35 * side),
    ]
    tissue = np.zeros(rows.shape, dtype=bool)
    for cy, cx, ry, rx in centres:
        tissue |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
    holes = rng.random(rows.shape) < 0.08
    tissue &= ~holes
    ys, xs = np.nonzero(tissue)
    keep = min(len(ys), int(n_tiles * 1.3))
    pick = np.sort(rng.choice(len(ys), size=keep, replace=False))
    xy = np.stack([xs[pick], ys[pick]], axis=1).astype(np.int64) * extent_px
    if len(xy) < n_tiles:
        raise ValueError(f"only {len(xy)} tissue tiles for {n_tiles}")
    return xy + np.asarray(origin, dtype=np.int64)


def generated_bag(
    n_tiles: int = 2000,
    num_features: int = 768,
    *,
    extent_px: int = 512,
    seed: int = 0,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``(features float32 (N, num_features), coords int64 (N, 2))`` of a generated slide."""
    coords = tissue_coords(n_tiles, extent_px=extent_px, seed=seed, origin=(1536 + 7, 4096 + 3))
    rng = np.random.default_rng(seed + 1)
    features = (rng.standard_normal((len(coords), num_features)) * scale).astype(np.float32)
    return features, coords
