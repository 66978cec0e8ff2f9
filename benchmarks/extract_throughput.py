"""End-to-end extraction throughput against model-only throughput, and peak memory. Prints JSON.

For each model (random weights, so nothing is downloaded), at one batch size:

- ``ratio``: end-to-end tiles/s of the streaming engine on a sample slide (from opening the
  slide to the bag written: tile reading and decoding, in worker processes or on small CPUs in
  the main process, the model, the writer) divided by the model-only tiles/s (preprocessing +
  model on random uint8 batches).
  A shared machine's speed drifts by 10-20% within a minute, so each process alternates
  model-only and end-to-end runs (M E M E M) and compares each end-to-end run with the
  model-only runs on either side of it; the median over ``--rounds`` x ``--repeats`` pairs is
  reported (the goal on a CPU: at least 0.95);
- ``model_busy``: the fraction of each end-to-end run's wall time spent inside the model, and
  ``forward_slowdown``: the model's time per tile inside end-to-end runs over its time in the
  neighbouring model-only runs. The first is measured within one run, so machine drift does not
  move it: it isolates the pipeline's own overhead (slide opening, waiting for the first batch,
  handing batches over, writing the bag); the second is the reading workers' competition for the
  cores;
- ``paired_ratio`` (only when tiles are read in the main process, the default on small CPUs):
  one more end-to-end run per process in which every model call is followed by a model-only
  call on a random batch of the same size, timed and taken off the run's clock, so each batch's
  model-only time is measured within a second of it. Drift cancels batch by batch; the median
  over processes is reported. With reading workers this pairing would flatter the pipeline
  (the workers read during the paused calls), so it is left out. The same run splits it in two
  factors: ``paired_model_busy`` (the run's time inside the model: everything the pipeline adds
  around the model, measured within the run) and ``paired_forward_ratio`` (the median over every
  pair of the model-only call's time over the engine's call just before it: anything the
  pipeline makes the model itself lose, such as caches or heap pages taken by reading). Their
  product, ``paired_estimate``, estimates the paired ratio without letting one batch slowed by
  a neighbouring process (tens of percent on a shared 2-core machine, for a ViT-L's 30 s
  batches) swing it;
- ``peak_rss_mb``: peak resident memory (VmHWM) of a process that only extracts the slide, and
  of one extracting a slide with 4x the tiles (the goal: at most 1.1x).

The sample slides are JPEG-compressed like a scanner's (``--compression deflate`` for lossless).
A ViT-L/16 (``uni``: UNI's architecture) computes about 1 tile/s on 2 cores, so it gets a smaller
slide by default (``DEFAULT_SCALE``).

With ``--compile``, model-only tiles/s with ``torch.compile`` (``compile=True``) against eager
for ResNet-50 and ViT-B (``--compile-models``), alternating in one process (E C E C E), and the
compile start-up: the first compiled call's time less an eager call's.

Usage: python benchmarks/extract_throughput.py [--models resnet50_imagenet ...] [--batch-size 32]
       python benchmarks/extract_throughput.py --models uni --scale 1 --repeats 3 --rounds 1
       python benchmarks/extract_throughput.py --models --compile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = ["resnet50_imagenet", "vit_base_patch16_224_imagenet", "uni"]
COMPILE_MODELS = ["resnet50_imagenet", "vit_base_patch16_224_imagenet"]
#: Slide scale per model when ``--scale`` is not given (else 16): a ViT-L/16 (``uni``) runs at
#: about 1 tile/s on 2 cores, so it gets the 1x slide (37 tiles; 142 for the 4x memory run).
DEFAULT_SCALE = {"uni": 1}
TILE_PX, TILE_UM = 224, 112  # 224 px at 0.5 mpp: read at level 0, no resize


def _slide(folder: Path, scale: int, compression: str) -> Path:
    path = folder / f"bench-{scale}x-{compression}.svs"
    if not path.exists():
        # 18 x 13 = 234 tile positions at 1x (about a quarter tissue); scale multiplies the
        # area and the tiles. Written by a child process, whose memory is its own.
        side = round(scale**0.5)
        code = (
            "import sys; from histobag.slide.samples import sample_slide; "
            "sample_slide(sys.argv[1], size=(int(sys.argv[2]), int(sys.argv[3])), seed=0, "
            "compression=sys.argv[4])"
        )
        size = (str(4096 * side), str(3072 * side))
        subprocess.run([sys.executable, "-c", code, str(path), *size, compression], check=True)
    return path


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: not inherited across exec, unlike
    getrusage's ru_maxrss)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _extractor(name: str, batch_size: int, *, compile: bool = False, warm_up: bool = True):
    import torch

    import histobag

    # The ImageNet models are sized by tile_px; the pathology ones (e.g. "uni") have a
    # fixed input size and accept no such argument.
    sized = "tile_px" in histobag.extractor_info(name).model_kwargs
    kwargs = {"tile_px": TILE_PX} if sized else {}
    if compile:  # only passed when asked, so the benchmark runs where compile= is unknown
        kwargs["compile"] = True
    fe = histobag.build_feature_extractor(name, weights="random", **kwargs)
    if warm_up:
        fe.forward_batch(torch.zeros((batch_size, 3, TILE_PX, TILE_PX), dtype=torch.uint8))
    return fe


def _model_only(fe, batch_size: int, tiles: int) -> float:
    """Tiles/s of preprocessing + model on a random uint8 batch."""
    import torch

    batch = torch.randint(0, 256, (batch_size, 3, TILE_PX, TILE_PX), dtype=torch.uint8)
    n_batches = max(2, round(tiles / batch_size))
    start = time.perf_counter()
    for _ in range(n_batches):
        fe.forward_batch(batch)
    return n_batches * batch_size / (time.perf_counter() - start)


def _end_to_end(fe, batch_size: int, slide: str, workers: str, paired: bool = False) -> dict:
    """Tiles/s of the engine from slide to bag, and the time spent inside the model.

    With ``paired``, every model call is followed by a model-only call on a random batch of the
    same size, timed and taken off the run's clock: model-only time measured within a second
    of each batch (only meaningful with no reading workers, which would keep reading during
    the paused calls).
    """
    import torch

    from histobag.engine import Job, run
    from histobag.io.bag_writers import PtBagWriter
    from histobag.tile_readers import OpenWSI

    out = Path(tempfile.mkdtemp())
    writer = PtBagWriter(out)

    class Sink:
        tiles = 0

        def finish(self, result):
            writer.write(result.key, result.features, result.top_left, result.geometry)
            Sink.tiles = len(result.features)

        def fail(self, key, reason):
            raise RuntimeError(reason)

    forward = fe.forward_batch
    in_model = [0.0, 0]  # seconds, tiles
    probe = torch.randint(0, 256, (batch_size, 3, TILE_PX, TILE_PX), dtype=torch.uint8)
    paused = [0.0]
    pairs = []  # (tiles, engine's model call s, model-only call s) per batch

    def timed_forward(batch):
        start = time.perf_counter()
        features = forward(batch)
        seconds = time.perf_counter() - start
        in_model[0] += seconds
        in_model[1] += len(batch)
        if paired:
            start = time.perf_counter()
            forward(probe[: len(batch)])
            paused[0] += time.perf_counter() - start
            pairs.append((len(batch), seconds, time.perf_counter() - start))
        return features

    # Built before the clock starts: it imports the slide-reading stack (once per process,
    # like importing torch); opening the slide happens inside run().
    job = Job("bench", OpenWSI(slide, TILE_PX, TILE_UM))  # default Otsu tissue detection
    fe.forward_batch = timed_forward
    try:
        start = time.perf_counter()
        run(
            fe,
            [job],
            Sink(),
            batch_size=batch_size,
            num_workers=workers if workers == "auto" else int(workers),
            spill_dir=out,
        )
        seconds = time.perf_counter() - start - paused[0]
    finally:
        del fe.forward_batch  # back to the class's method
    return {
        "tiles": Sink.tiles,
        "seconds": seconds,
        "tiles_per_s": Sink.tiles / seconds,
        "model_seconds": in_model[0],
        "model_tiles": in_model[1],
        "paired_model_only_seconds": paused[0],
        "pairs": pairs,
    }


def child_ratio(name: str, batch_size: int, slide: str, workers: str, tiles: int, rounds: int):
    """Model-only and end-to-end runs alternating in one process (M E M ... E M): each
    end-to-end run is compared with the model-only runs on either side of it. With
    ``rounds`` 0, only the paired run."""
    from histobag.engine import auto_workers

    fe = _extractor(name, batch_size)
    model = [_model_only(fe, batch_size, tiles / 2)] if rounds else []
    runs = []
    for _ in range(rounds):
        runs.append(_end_to_end(fe, batch_size, slide, workers))
        model.append(_model_only(fe, batch_size, tiles / 2))
    reference = [(model[i] + model[i + 1]) / 2 for i in range(rounds)]
    inline = (auto_workers(fe.device) if workers == "auto" else int(workers)) == 0
    paired = _end_to_end(fe, batch_size, slide, workers, paired=True) if inline else None
    return {
        "paired_ratio": (
            round(paired["paired_model_only_seconds"] / paired["seconds"], 3) if paired else None
        ),
        "paired_model_busy": (
            round(paired["model_seconds"] / paired["seconds"], 4) if paired else None
        ),
        # (tiles, engine's model call s, model-only call s) of each batch
        "pairs": [(n, round(e, 3), round(m, 3)) for n, e, m in paired["pairs"]] if paired else [],
        "paired_tiles": paired["tiles"] if paired else None,
        "paired_seconds": round(paired["seconds"], 2) if paired else None,
        "model_only_tiles_per_s": [round(m, 2) for m in model],
        "end_to_end_tiles_per_s": [round(e2e["tiles_per_s"], 2) for e2e in runs],
        "ratios": [round(e2e["tiles_per_s"] / ref, 3) for e2e, ref in zip(runs, reference)],
        "model_busy": [round(e2e["model_seconds"] / e2e["seconds"], 3) for e2e in runs],
        "forward_slowdown": [
            round(e2e["model_seconds"] / e2e["model_tiles"] * ref, 3)
            for e2e, ref in zip(runs, reference)
        ],
        "precision": fe.precision,
    }


def child_memory(name: str, batch_size: int, slide: str, workers: str) -> dict:
    """End-to-end only, and this process's peak memory."""
    fe = _extractor(name, batch_size)
    e2e = _end_to_end(fe, batch_size, slide, workers)
    return {
        "tiles": e2e["tiles"],
        "seconds": round(e2e["seconds"], 2),
        "tiles_per_s": e2e["tiles_per_s"],
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def child_compile(name: str, batch_size: int, tiles: int, rounds: int) -> dict:
    """Model-only tiles/s through ``torch.compile`` against eager, alternating in one process
    (E C E ... C E), each compiled run compared with the eager runs on either side of it; and
    what compiling costs: the first compiled call (which compiles) less an eager call, and the
    first call on a smaller batch (a slide's last batch), which compiles again."""
    import torch

    from histobag.errors import HistobagError

    eager = _extractor(name, batch_size)
    batch = torch.randint(0, 256, (batch_size, 3, TILE_PX, TILE_PX), dtype=torch.uint8)
    smaller = batch[: max(1, batch_size - 3)]

    def timed(fe, x) -> float:
        start = time.perf_counter()
        fe.forward_batch(x)
        return time.perf_counter() - start

    eager_call, eager_smaller = timed(eager, batch), timed(eager, smaller)
    try:
        compiled = _extractor(name, batch_size, compile=True, warm_up=False)
    except (TypeError, HistobagError) as exc:  # a histobag without compile=, or no compiler
        return {"error": f"{type(exc).__name__}: {exc}"}
    compiled.model.load_state_dict(eager.model.state_dict())  # the same random weights
    first_call = timed(compiled, batch)
    first_smaller = timed(compiled, smaller)
    eager_runs = [_model_only(eager, batch_size, tiles)]
    compiled_runs = []
    for _ in range(rounds):
        compiled_runs.append(_model_only(compiled, batch_size, tiles))
        eager_runs.append(_model_only(eager, batch_size, tiles))
    ratios = [c / ((eager_runs[i] + eager_runs[i + 1]) / 2) for i, c in enumerate(compiled_runs)]
    return {
        "compiled_vs_eager": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "eager_tiles_per_s": [round(e, 2) for e in eager_runs],
        "compiled_tiles_per_s": [round(c, 2) for c in compiled_runs],
        "startup_s": round(first_call - eager_call, 2),
        "smaller_batch_recompile_s": round(first_smaller - eager_smaller, 2),
        "precision": compiled.precision,
    }


def _median(runs: list[dict], key: str) -> float | None:
    """Median of ``key``'s values over every process's runs (None without runs)."""
    values = [x for r in runs for x in r[key]]
    return statistics.median(values) if values else None


def _child(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="auto")
    parser.add_argument(
        "--scale",
        type=int,
        help="slide area, in 4096x3072 units (default: 16, or the model's DEFAULT_SCALE)",
    )
    parser.add_argument("--compression", choices=["jpeg", "deflate"], default="jpeg")
    parser.add_argument("--repeats", type=int, default=3, help="processes measuring the ratio")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="end-to-end runs per process besides the paired one (0: the paired run only)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also measure torch.compile against eager"
    )
    parser.add_argument("--compile-models", nargs="+", default=COMPILE_MODELS)
    parser.add_argument(
        "--compile-tiles", type=int, default=256, help="tiles per model-only run with --compile"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, name, batch, *rest = args.child
        if kind == "ratio":
            slide, workers, tiles, rounds = rest
            result = child_ratio(name, int(batch), slide, workers, int(tiles), int(rounds))
        elif kind == "compile":
            tiles, rounds = rest
            result = child_compile(name, int(batch), int(tiles), int(rounds))
        else:
            result = child_memory(name, int(batch), *rest)
        print(json.dumps(result))
        return

    import torch

    folder = Path(tempfile.gettempdir()) / "histobag-bench"
    folder.mkdir(exist_ok=True)
    report = {
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "compression": args.compression,
        "models": {},
    }
    common = (str(args.batch_size),)
    for name in args.models:
        scale = args.scale or DEFAULT_SCALE.get(name, 16)
        small = _slide(folder, scale, args.compression)
        large = _slide(folder, 4 * scale, args.compression)
        memory = _child("memory", name, *common, str(small), args.workers)
        memory_4x = _child("memory", name, *common, str(large), args.workers)
        tiles = str(memory["tiles"])
        runs = [
            _child("ratio", name, *common, str(small), args.workers, tiles, str(args.rounds))
            for _ in range(args.repeats)
        ]
        paired = runs[0]["paired_ratio"] is not None
        pairs = [pair for r in runs for pair in r["pairs"]]
        forward_ratio = statistics.median(m / e for _, e, m in pairs) if pairs else None
        busy = statistics.median(r["paired_model_busy"] for r in runs) if paired else None

        report["models"][name] = {
            "precision": runs[0]["precision"],
            "scale": scale,
            "ratio": _median(runs, "ratios"),
            "model_busy": _median(runs, "model_busy"),
            "forward_slowdown": _median(runs, "forward_slowdown"),
            "paired_ratio": statistics.median(r["paired_ratio"] for r in runs) if paired else None,
            "paired_model_busy": busy,
            "paired_forward_ratio": round(forward_ratio, 3) if pairs else None,
            "paired_estimate": round(busy * forward_ratio, 3) if pairs else None,
            "ratio_runs": runs,
            "end_to_end": memory,
            "end_to_end_4x": memory_4x,
            "peak_rss_ratio_4x": round(memory_4x["peak_rss_mb"] / memory["peak_rss_mb"], 3),
        }
        print(json.dumps({name: report["models"][name]}), file=sys.stderr, flush=True)
    if args.compile:
        report["compile"] = {}
        for name in args.compile_models:
            result = _child(
                "compile", name, *common, str(args.compile_tiles), str(args.rounds or 1)
            )
            report["compile"][name] = result
            print(json.dumps({f"compile {name}": result}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
