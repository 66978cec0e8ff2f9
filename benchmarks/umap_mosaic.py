"""Time and peak memory of a UMAP slide map and a mosaic for many tiles. Prints JSON.

Stages: synthetic features (clustered, like tiles of several tissue types), UMAP fit
(``low_memory=True``), mosaic grid assignment without images (strict, expanded, centroid),
then mosaics rendered with tile images (a synthetic tile source, so no slides are needed).

Usage: python benchmarks/umap_mosaic.py [--tiles 100000] [--features 768] [--n-epochs N]
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux), so each stage reports its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak resident memory (MiB) since the last reset (Linux), else since start."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class Stage:
    """Times a block and records the process's peak resident memory during it.

    (tracemalloc is not used: it slows numba's compilation and UMAP by an order of
    magnitude.)
    """

    def __init__(self, results: dict, name: str) -> None:
        self.results, self.name = results, name
        self.extra: dict = {}

    def __enter__(self) -> "Stage":
        self.per_stage = _reset_peak()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self.start
        self.results[self.name] = {
            "seconds": round(seconds, 3),
            "peak_rss_mb": _peak_rss_mb(),
            "peak_is_per_stage": self.per_stage,
            **self.extra,
        }


class SyntheticTiles:
    """A tile source drawing a textured tile per location (stands in for slides)."""

    def __init__(self, px: int) -> None:
        self.px = px

    def read(self, slide: str, x: int, y: int) -> np.ndarray:
        rng = np.random.default_rng(abs(hash((slide, x, y))) % 2**32)
        base = rng.integers(60, 220, 3)
        noise = rng.integers(-30, 30, (self.px, self.px, 1))
        return np.clip(base + noise, 0, 255).astype(np.uint8)


def synthetic_features(n: int, f: int, slides: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, f)).astype(np.float32) * 3
    cluster = rng.integers(0, len(centres), n)
    features = centres[cluster] + rng.normal(size=(n, f)).astype(np.float32)
    slide = np.repeat(np.arange(slides), int(np.ceil(n / slides)))[:n]
    return features, slide


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=768)
    parser.add_argument("--slides", type=int, default=50)
    parser.add_argument("--n-epochs", type=int, default=None, help="UMAP epochs (cap for speed)")
    parser.add_argument("--n-neighbors", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None, help="UMAP seed (None: parallel)")
    parser.add_argument("--num-tiles-x", type=int, default=50)
    parser.add_argument("--tile-px", type=int, default=224)
    args = parser.parse_args()

    import pandas as pd

    from histobag.analysis.mosaic import Mosaic
    from histobag.analysis.mosaic_grid import assign_grid
    from histobag.analysis.slidemap import SlideMap, umap_embedding

    results: dict = {
        "tiles": args.tiles,
        "features": args.features,
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "umap": {"low_memory": True, "n_neighbors": args.n_neighbors, "metric": "cosine",
                 "n_epochs": args.n_epochs, "random_state": args.seed},
    }  # fmt: skip
    stages: dict = {}
    with Stage(stages, "make_features"):
        features, slide = synthetic_features(args.tiles, args.features, args.slides)
    with Stage(stages, "import_umap"):
        import umap  # noqa: F401  (numba start-up, paid once per process)
    with Stage(stages, "umap_jit_warmup_300_points"):  # numba compiles once per process
        umap_embedding(features[:300], n_neighbors=15, n_epochs=5, random_state=args.seed)
    with Stage(stages, "umap_fit_low_memory"):
        coords = umap_embedding(
            features,
            n_neighbors=args.n_neighbors,
            low_memory=True,
            n_epochs=args.n_epochs,
            random_state=args.seed,
        )
    for name, kwargs in (
        ("grid_strict_nearest", {}),
        ("grid_expanded_nearest", {"expanded": True, "leniency": 1.5}),
        ("grid_strict_centroid", {"tile_select": "centroid", "features": features}),
    ):
        with Stage(stages, name) as st:
            grid = assign_grid(coords, args.num_tiles_x, **kwargs)
            st.extra = {"cells": grid.num_x * grid.num_y, "filled": len(grid)}

    data = pd.DataFrame(
        {
            "x": coords[:, 0],
            "y": coords[:, 1],
            "slide": [f"slide-{s}" for s in slide],
            "loc_x": np.arange(args.tiles) * 256,
            "loc_y": np.zeros(args.tiles, np.int64),
            "tile": np.arange(args.tiles),
        }
    )
    smap = SlideMap(data, features=features)
    smap.label([f"class-{s % 3}" for s in slide])
    tiles = SyntheticTiles(args.tile_px)
    with tempfile.TemporaryDirectory() as tmp:
        for name, nx, resolution in (
            ("mosaic_few_images_10x", 10, "low"),
            (f"mosaic_images_{args.num_tiles_x}x", args.num_tiles_x, "medium"),
        ):
            with Stage(stages, name) as st:
                mosaic = Mosaic(smap, tiles, num_tiles_x=nx, resolution=resolution)
                path = mosaic.save(Path(tmp) / f"{name}.png")
                st.extra = {"images": len(mosaic.grid), "png_kb": path.stat().st_size // 1024}
    results["stages"] = stages
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
