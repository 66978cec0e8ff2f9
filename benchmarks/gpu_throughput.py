"""Model-only against end-to-end tiles/s on a GPU (or a CPU), one process or many. Prints JSON.

For each model (random weights, so nothing is downloaded; by default ResNet-50 and ``uni``, a
ViT-L/16), on generated sample slides:

- ``model_only_tiles_per_s``: preprocessing + model on a random uint8 batch already on the
  device, in the chosen precision (``--precision``; default bf16 on CUDA), timed to the
  device's completion;
- ``end_to_end_tiles_per_s``: the streaming engine (:func:`histobag.engine.run`) from opening
  the slides to the bags written: reading workers (``--workers``), pinned memory and
  non-blocking copies on CUDA, as every extraction runs. The same slide file is extracted
  under several names (``slides_per_run``), so a run lasts about ``--seconds``; its page cache
  makes the reads cheaper than from a cold disk, the decoding is the same;
- ``ratio``: each end-to-end run over the mean of the model-only runs just before and after it
  (M E M E M), median over ``--repeats``; ``steady_ratio`` leaves out the run's start (worker
  start-up, the first slide opening), counting from the model's first batch to its last;
  the target on one H100/H200 for the ViT-L: ``ratio`` >= 0.85.

Under ``torchrun`` (``LOCAL_RANK``/``WORLD_SIZE`` set) each rank measures on ``cuda:LOCAL_RANK``
(CPU ranks share the cores) at the same time as the others; rank 0 collects every rank's
result through files in a shared folder (no collective, so no NCCL) and prints them with the
sums of the ranks' tiles/s. Across nodes pass ``--shared-dir`` on a shared file system.

Usage:
    python benchmarks/gpu_throughput.py [--models resnet50_imagenet uni] [--precision bf16]
    torchrun --nproc-per-node=4 benchmarks/gpu_throughput.py
    python benchmarks/gpu_throughput.py --device cpu --smoke   # a tiny check, under a minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import histobag
from histobag.engine import Job, auto_workers, run
from histobag.files import write_json_atomic
from histobag.io.bag_writers import PtBagWriter
from histobag.slide.samples import sample_slide
from histobag.tile_readers import OpenWSI

DEFAULT_MODELS = ["resnet50_imagenet", "uni"]  # uni: ViT-L/16
SMOKE_MODELS = ["resnet18_imagenet"]
TILE_PX, TILE_UM = 224, 112  # 224 px at 0.5 mpp: read at level 0, no resize
SLIDE_SIZE = (16384, 12288)  # about 560 tissue tiles of 224 px
SMOKE_SLIDE_SIZE = (4096, 3072)
WAIT_S = 1800  # how long a rank waits for the others (a slide being written, results)


# -- processes ------------------------------------------------------------------------------


class Ranks:
    """This process's place in a ``torchrun`` launch (a single process: rank 0 of 1)."""

    def __init__(self, shared_dir: str | None) -> None:
        env = os.environ
        self.local_rank = int(env.get("LOCAL_RANK", 0))
        self.rank = int(env.get("RANK", self.local_rank))
        self.world = int(env.get("WORLD_SIZE", 1))
        self.local_world = int(env.get("LOCAL_WORLD_SIZE", self.world))
        launch = env.get("TORCHELASTIC_RUN_ID", "none")
        if launch == "none":  # no rendezvous id: the ranks of one node share their agent
            launch = f"{os.getppid()}-{env.get('MASTER_PORT', '')}"
        default = Path(tempfile.gettempdir()) / f"histobag-gpu-bench-{launch}"
        self.folder = Path(shared_dir) if shared_dir else default
        if self.world > 1:
            self.folder.mkdir(parents=True, exist_ok=True)

    def barrier(self, name: str) -> None:
        """Wait until every rank has reached ``name``."""
        if self.world == 1:
            return
        write_json_atomic(self.folder / f"{name}-{self.rank}.json", {"rank": self.rank})
        _wait(lambda: len(list(self.folder.glob(f"{name}-*.json"))) >= self.world, name)

    def gather(self, result: dict) -> list[dict] | None:
        """Every rank's result on rank 0 (None on the others)."""
        if self.world == 1:
            return [result]
        write_json_atomic(self.folder / f"result-{self.rank}.json", result)
        if self.rank != 0:
            return None
        files = [self.folder / f"result-{r}.json" for r in range(self.world)]
        _wait(lambda: all(f.exists() for f in files), "results", fail=False)
        results = [json.loads(f.read_text()) for f in files if f.exists()]
        shutil.rmtree(self.folder, ignore_errors=True)
        return results


def _wait(done, what: str, fail: bool = True) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            if fail:
                raise TimeoutError(f"gave up waiting for the other ranks ({what})")
            return
        time.sleep(0.2)


def _device(name: str | None, ranks: Ranks) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and ranks.world > 1:
        if ranks.local_rank >= torch.cuda.device_count():
            raise SystemExit(
                f"rank {ranks.rank}: LOCAL_RANK {ranks.local_rank} but this node has "
                f"{torch.cuda.device_count()} GPU(s); use --nproc-per-node at most that"
            )
        device = torch.device("cuda", ranks.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "cpu" and ranks.local_world > 1:  # CPU ranks split the cores
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        torch.set_num_threads(max(1, (cores or os.cpu_count() or 1) // ranks.local_world))
    return device


def _workers(workers: str, device: torch.device, ranks: Ranks) -> int:
    """Reading workers per rank: ``"auto"`` as the engine decides for one process, on this
    rank's share of the host cores when several ranks share a node."""
    if workers != "auto":
        return int(workers)
    if ranks.local_world == 1:
        return auto_workers(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    share = max(1, (cores or os.cpu_count() or 1) // ranks.local_world)
    if device.type == "cpu":  # the rank's model threads take its share
        return 0 if share <= 4 else min(4, share // 4)
    return max(1, min(8, share - 1))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- measurements ---------------------------------------------------------------------------


def _slide(folder: Path, size: tuple[int, int], ranks: Ranks) -> Path:
    """The sample slide, written once per node (by local rank 0; the others wait for it)."""
    path = folder / f"gpu-bench-{size[0]}x{size[1]}-jpeg.svs"
    if not path.exists() and ranks.local_rank == 0:
        sample_slide(path, size=size, seed=0, compression="jpeg")  # written atomically
    _wait(path.exists, "the sample slide")
    return path


def _extractor(name: str, device: torch.device, args: argparse.Namespace):
    # The ImageNet models are sized by tile_px; the pathology ones have a fixed input size.
    sized = "tile_px" in histobag.extractor_info(name).model_kwargs
    fe = histobag.build_feature_extractor(
        name,
        weights="random",
        device=device,
        precision=args.precision,
        compile=args.compile,
        **({"tile_px": TILE_PX} if sized else {}),
    )
    # Warm-up (and compilation): a full batch and a partial one, the shapes a run sees.
    for size in (args.batch_size, max(1, args.batch_size // 2)):
        fe.forward_batch(torch.zeros((size, 3, TILE_PX, TILE_PX), dtype=torch.uint8))
    _sync(device)
    return fe


def _model_only(fe, batch_size: int, seconds: float) -> float:
    """Tiles/s of preprocessing + model on a random uint8 batch already on the device."""
    batch = torch.randint(0, 256, (batch_size, 3, TILE_PX, TILE_PX), dtype=torch.uint8)
    batch = batch.to(fe.device)
    n = 0
    start = time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        fe.forward_batch(batch)
        _sync(fe.device)  # as the engine does, taking each batch's features to the host
        n += 1
    return n * batch_size / (time.perf_counter() - start)


class _CountingSink:
    """Writes each bag (as extraction does) and counts the tiles."""

    def __init__(self, folder: Path) -> None:
        self.writer = PtBagWriter(folder)
        self.tiles = 0

    def finish(self, result) -> None:
        self.writer.write(result.key, result.features, result.top_left, result.geometry)
        self.tiles += len(result.features)

    def fail(self, key: str, reason: str) -> None:
        raise RuntimeError(f"{key}: {reason}")


def _end_to_end(fe, slide: Path, n_slides: int, args: argparse.Namespace) -> dict:
    """Tiles/s of the engine from opening the slides to the bags written."""
    out = Path(tempfile.mkdtemp(prefix="histobag-gpu-bench-"))
    sink = _CountingSink(out)
    jobs = [Job(f"slide{i}", OpenWSI(str(slide), TILE_PX, TILE_UM)) for i in range(n_slides)]
    forward = fe.forward_batch
    calls: list[tuple[float, int]] = []  # (start time, tiles) of each model call

    def timed_forward(batch):
        calls.append((time.perf_counter(), len(batch)))
        return forward(batch)

    fe.forward_batch = timed_forward
    try:
        start = time.perf_counter()
        run(
            fe,
            jobs,
            sink,
            batch_size=args.batch_size,
            num_workers=args.workers,
            spill_dir=out,
        )
        seconds = time.perf_counter() - start
    finally:
        del fe.forward_batch  # back to the class's method
        shutil.rmtree(out, ignore_errors=True)
    # Steady state: from the first model call to the last (the tiles of all calls but the
    # last, over the time between their starts), without worker start-up and the first open.
    steady = None
    if len(calls) > 2:
        steady = sum(n for _, n in calls[:-1]) / (calls[-1][0] - calls[0][0])
    return {
        "tiles": sink.tiles,
        "seconds": seconds,
        "tiles_per_s": sink.tiles / seconds,
        "steady_tiles_per_s": steady,
    }


def measure_model(name: str, device: torch.device, slide: Path, args) -> dict:
    """M E M E ... M for one model, on this process's device."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    fe = _extractor(name, device, args)
    build_seconds = time.perf_counter() - start
    # A first run on one slide: warms the workers' page cache and sizes the measured runs.
    probe = _end_to_end(fe, slide, 1, args)
    model = [_model_only(fe, args.batch_size, args.model_seconds)]
    tiles_per_slide = max(1, probe["tiles"])
    n_slides = min(args.max_slides, max(1, math.ceil(args.seconds * model[0] / tiles_per_slide)))
    runs = []
    for _ in range(args.repeats):
        runs.append(_end_to_end(fe, slide, n_slides, args))
        model.append(_model_only(fe, args.batch_size, args.model_seconds))
    reference = [(model[i] + model[i + 1]) / 2 for i in range(args.repeats)]
    ratios = [e2e["tiles_per_s"] / ref for e2e, ref in zip(runs, reference)]
    steady = [
        e2e["steady_tiles_per_s"] / ref
        for e2e, ref in zip(runs, reference)
        if e2e["steady_tiles_per_s"] is not None
    ]
    result = {
        "precision": fe.precision,
        "compiled": fe.compiled,
        "model_only_tiles_per_s": round(statistics.median(model), 2),
        "end_to_end_tiles_per_s": round(statistics.median(e["tiles_per_s"] for e in runs), 2),
        "ratio": round(statistics.median(ratios), 3),
        "steady_ratio": round(statistics.median(steady), 3) if steady else None,
        "tiles_per_slide": tiles_per_slide,
        "slides_per_run": n_slides,
        "build_seconds": round(build_seconds, 2),
        "model_only_runs": [round(m, 2) for m in model],
        "end_to_end_runs": [
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in e.items()} for e in runs
        ],
    }
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


# -- report ---------------------------------------------------------------------------------


def _aggregate(results: list[dict]) -> dict:
    """The ranks' tiles/s summed per model."""
    out = {}
    for name in results[0]["models"]:
        model = sum(r["models"][name]["model_only_tiles_per_s"] for r in results)
        e2e = sum(r["models"][name]["end_to_end_tiles_per_s"] for r in results)
        out[name] = {
            "model_only_tiles_per_s": round(model, 2),
            "end_to_end_tiles_per_s": round(e2e, 2),
            "ratio": round(e2e / model, 3),
        }
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32")
    parser.add_argument("--workers", default="auto", help="reading workers per rank, or auto")
    parser.add_argument(
        "--precision", default=None, help="auto, fp32, bf16 or fp16; default bf16 on CUDA, auto"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs per model")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of a run (about)")
    parser.add_argument("--model-seconds", type=float, default=5.0, help="model-only window")
    parser.add_argument("--max-slides", type=int, default=200, help="slides per run, at most")
    parser.add_argument("--shared-dir", default=None, help="results folder seen by all ranks")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, under a minute")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models = args.models or SMOKE_MODELS
        args.batch_size = args.batch_size or 8
        args.repeats, args.seconds, args.model_seconds, args.max_slides = 1, 0.0, 0.3, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    ranks = Ranks(args.shared_dir)
    device = _device(args.device, ranks)
    args.models = args.models or DEFAULT_MODELS
    args.batch_size = args.batch_size or (256 if device.type == "cuda" else 32)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "auto")
    workers = args.workers = _workers(args.workers, device, ranks)
    folder = Path(tempfile.gettempdir()) / "histobag-bench"
    folder.mkdir(exist_ok=True)
    slide = _slide(folder, SMOKE_SLIDE_SIZE if args.smoke else SLIDE_SIZE, ranks)
    ranks.barrier("start")  # every rank measures at the same time as the others
    result = {
        "rank": ranks.rank,
        "device": str(device),
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "histobag": histobag.__version__,
        "cpu_count": os.cpu_count(),
        "batch_size": args.batch_size,
        "workers": workers,
        "precision": args.precision,
        "compile": args.compile,
        "smoke": args.smoke,
        "slide_size": list(SMOKE_SLIDE_SIZE if args.smoke else SLIDE_SIZE),
        "models": {},
    }
    for name in args.models:
        print(f"rank {ranks.rank}: measuring {name} on {device}", file=sys.stderr, flush=True)
        result["models"][name] = measure_model(name, device, slide, args)
        print(json.dumps({name: result["models"][name]}), file=sys.stderr, flush=True)
    results = ranks.gather(result)
    if results is None:
        return
    if ranks.world == 1:
        print(json.dumps(result, indent=2))
        return
    report = {
        "world_size": ranks.world,
        "ranks_reported": [r["rank"] for r in results],
        "aggregate": _aggregate(results),
        "per_rank": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
