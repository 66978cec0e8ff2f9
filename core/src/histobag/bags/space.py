"""Before a bag run: will the output folder hold the bags? Estimate, and warn when it won't.

The estimate is an upper bound: every grid tile of a slide counted as tissue (tissue detection
runs only when a slide is extracted), ``n_features`` float32 values and one coordinate pair per
tile, plus a little per bag. Opening a slide's grid costs a few milliseconds, so a large
cohort is estimated from an evenly spaced sample of its slides.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histobag.engine import Job
from histobag.errors import HistobagError
from histobag.files import format_bytes, free_bytes
from histobag.geometry import evenly_spaced
from histobag.io.tfrecord import index_path, read_index
from histobag.slide import WSI
from histobag.tile_readers import OpenTFRecord, OpenWSI

__all__ = ["estimate_bag_bytes", "short_of_space"]

#: Slides opened at most to estimate a run's tiles; the rest are extrapolated.
SAMPLE_SLIDES = 32
#: Bytes per bag besides its arrays (file headers, the index file, zip entries).
BAG_OVERHEAD = 8 * 1024


def _grid_tiles(opener: Any) -> int | None:
    """Upper bound of an opener's tiles, or None when it cannot be known cheaply."""
    if isinstance(opener, OpenWSI):
        kwargs = {**opener.kwargs, "tissue": None, "roi": None}
        return len(WSI(opener.path, opener.tile_px, opener.tile_um, **kwargs))
    if isinstance(opener, OpenTFRecord):
        index = index_path(opener.path)
        return len(read_index(index)[0]) if index.is_file() else None
    inner, cap = getattr(opener, "opener", None), getattr(opener, "max_tiles", None)
    if inner is not None and isinstance(cap, int):  # a subsampling wrapper
        tiles = _grid_tiles(inner)
        return None if tiles is None else min(tiles, cap)
    return None


def estimate_bag_bytes(jobs: Sequence[Job], n_features: int) -> int | None:
    """Upper bound of the bytes the bags of ``jobs`` will take, or None if unknown.

    Args:
        jobs: The slides still to extract.
        n_features: Feature width of the extractor.
    """
    if not jobs:
        return 0
    picks = evenly_spaced(len(jobs), SAMPLE_SLIDES)
    counts = []
    for i in picks:
        try:
            tiles = _grid_tiles(jobs[i].open)
        except (HistobagError, OSError):
            tiles = None  # an unreadable slide is reported when the run reaches it
        if tiles is not None:
            counts.append(tiles)
    if not counts:
        return None
    mean_tiles = float(np.mean(counts))
    per_bag = mean_tiles * (n_features * 4 + 16) + BAG_OVERHEAD
    return int(per_bag * len(jobs))


def short_of_space(
    outdir: str | os.PathLike[str], jobs: Sequence[Job], n_features: int
) -> str | None:
    """A warning message when ``outdir`` has less room than the bags of ``jobs`` may need.

    Returns:
        The message (to issue as a :class:`~histobag.errors.LowDiskSpaceWarning`), or None
        when there is room or the need cannot be estimated.
    """
    needed = estimate_bag_bytes(jobs, n_features)
    free = free_bytes(outdir)
    if needed is None or free is None or free >= needed:
        return None
    return (
        f"{Path(outdir)} has {format_bytes(free)} free, and the {len(jobs)} bags of this run "
        f"may need up to {format_bytes(needed)} (if every grid tile is tissue). The run goes "
        "on; if the disk fills, it stops with a clear error and keeps every finished bag, and "
        "a rerun after freeing space resumes."
    )
