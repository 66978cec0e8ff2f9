"""End-to-end extraction throughput against model-only throughput, and peak memory. Prints JSON.

For each model (random weights, so nothing is downloaded), at one batch size:

- ``model_only``: tiles/s of the extractor (preprocessing + model) on random uint8 batches;
- ``end_to_end``: tiles/s of the streaming engine on a sample slide, from opening the slide to
  the bag written (tile reading and decoding in worker processes, the model, the writer);
- ``ratio``: end_to_end / model_only (the goal on a CPU: at least 0.95);
- ``peak_rss_mb``: peak resident memory of the extracting process, for a slide and for a slide
  with 4x the tiles (the goal: at most 1.1x).

Each measurement runs in a fresh process so peak memory is its own.

Usage: python benchmarks/extract_throughput.py [--models resnet50_imagenet ...] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = ["resnet50_imagenet", "vit_base_patch16_224_imagenet"]
TILE_PX, TILE_UM = 224, 112  # 224 px at 0.5 mpp: read at level 0, no resize


def _slide(folder: Path, scale: int) -> Path:
    from histobag.data import sample_slide

    path = folder / f"bench-{scale}x.svs"
    if not path.exists():
        # 18 x 13 = 234 tile positions at 1x (about a quarter tissue); scale multiplies the
        # area and the tiles.
        side = round(scale**0.5)
        sample_slide(path, size=(4096 * side, 3072 * side), seed=0)
    return path


def _extractor(name: str):
    import histobag

    return histobag.build_feature_extractor(name, tile_px=TILE_PX, weights="random")


def child_model_only(name: str, batch_size: int, tiles: int) -> dict:
    """Tiles/s of preprocessing + model on random uint8 batches (after one warm-up batch)."""
    import torch

    fe = _extractor(name)
    batch = torch.randint(0, 256, (batch_size, 3, TILE_PX, TILE_PX), dtype=torch.uint8)
    fe.forward_batch(batch)
    n_batches = max(1, tiles // batch_size)
    start = time.perf_counter()
    for _ in range(n_batches):
        fe.forward_batch(batch)
    seconds = time.perf_counter() - start
    return {
        "tiles": n_batches * batch_size,
        "seconds": seconds,
        "tiles_per_s": n_batches * batch_size / seconds,
        "precision": fe.precision,
    }


def child_end_to_end(name: str, batch_size: int, slide: str, workers: str) -> dict:
    """Tiles/s of the engine from slide to bag (after one warm-up batch of the model)."""
    import torch

    from histobag.engine import Job, run
    from histobag.io.bags import PtBagWriter
    from histobag.sources import OpenWSI

    fe = _extractor(name)
    fe.forward_batch(torch.zeros((batch_size, 3, TILE_PX, TILE_PX), dtype=torch.uint8))
    out = Path(tempfile.mkdtemp())
    writer = PtBagWriter(out)

    class Sink:
        tiles = 0

        def finish(self, result):
            writer.write(result.key, result.features, result.top_left, result.geometry)
            Sink.tiles = len(result.features)

        def fail(self, key, reason):
            raise RuntimeError(reason)

    job = Job("bench", OpenWSI(slide, TILE_PX, TILE_UM))  # default Otsu tissue detection
    start = time.perf_counter()
    run(
        fe,
        [job],
        Sink(),
        batch_size=batch_size,
        num_workers=workers if workers == "auto" else int(workers),
        spill_dir=out,
    )
    seconds = time.perf_counter() - start
    return {
        "tiles": Sink.tiles,
        "seconds": seconds,
        "tiles_per_s": Sink.tiles / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def _child(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--scale", type=int, default=4, help="slide area, in 4096x3072 units")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "model":
            result = child_model_only(rest[0], int(rest[1]), int(rest[2]))
        else:
            result = child_end_to_end(rest[0], int(rest[1]), rest[2], rest[3])
        print(json.dumps(result))
        return

    import torch

    folder = Path(tempfile.gettempdir()) / "histobag-bench"
    folder.mkdir(exist_ok=True)
    small, large = _slide(folder, args.scale), _slide(folder, 4 * args.scale)
    report = {
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "scale": args.scale,
        "models": {},
    }
    for name in args.models:
        e2e = _child("e2e", name, str(args.batch_size), str(small), args.workers)
        model = _child("model", name, str(args.batch_size), str(max(128, e2e["tiles"])))
        e2e_large = _child("e2e", name, str(args.batch_size), str(large), args.workers)
        report["models"][name] = {
            "precision": model["precision"],
            "model_only": model,
            "end_to_end": e2e,
            "ratio": round(e2e["tiles_per_s"] / model["tiles_per_s"], 3),
            "end_to_end_4x": e2e_large,
            "ratio_4x": round(e2e_large["tiles_per_s"] / model["tiles_per_s"], 3),
            "peak_rss_ratio_4x": round(e2e_large["peak_rss_mb"] / e2e["peak_rss_mb"], 3),
        }
        print(json.dumps({name: report["models"][name]}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
