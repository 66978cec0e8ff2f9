"""Model-only against end-to-end tiles/s on a GPU (or a CPU), one process or many. Prints JSON.

For each model (random weights, so nothing is downloaded; by default ResNet-50
``resnet50_imagenet``, ViT-L/16 ``uni`` and ViT-g/14 ``h-optimus-0``), on a generated sample
slide (16384 x 12288 px, about 560 tissue tiles of 224 px):

- ``model_only_tiles_per_s``: preprocessing + model on a random uint8 batch already on the
  device, in the chosen precision (``--precision``; default bf16 on CUDA), batches queued back
  to back (the model's own pace); ``model_only_busy_fraction``: the share of that window the
  device spent inside the model calls (below 1 on a GPU when the host cannot launch the
  model's kernels as fast as the GPU runs them);
- ``end_to_end_tiles_per_s``: the streaming engine (:func:`histobag.engine.run`) from opening
  the slides to the bags written: reading workers (``--workers``), pinned memory and
  non-blocking copies on CUDA, as every extraction runs. The same slide file is extracted
  under several names (``slides_per_run``), so a run lasts about ``--seconds``; its page cache
  makes the reads cheaper than from a cold disk, the decoding is the same;
- ``ratio``: each end-to-end run over the mean of the model-only runs just before and after it
  (M E M E M, so a drifting clock or a warming GPU cancels), median over ``--repeats``;
  ``steady_ratio`` leaves out the run's start (worker start-up, the first slide opening),
  counting from the model's first batch to its last. Target on one H100/H200 for the ViT-L:
  ``ratio`` >= 0.85;
- ``busy_fraction``: the device's time inside the model calls over the end-to-end run's wall
  time. On CUDA it is the GPU's own time, from ``torch.cuda.Event`` pairs recorded on the
  device's stream around each model call (so host work between calls does not count); on a
  CPU the host clock around each call (on MPS too, the device synchronised after each call,
  which keeps the host from running ahead).
  ``steady_busy_fraction`` counts from the first model call to the run's end. Target on a GPU:
  ``busy_fraction`` >= 0.9;
- ``first_batch_s``: from calling ``engine.run`` to its first model call (reading workers
  starting, the first slide opened and read). The report's ``startup`` gives it for the
  process's first run and for its second (the target: <= 0.5 s once a run has been made in the
  process), with the number of reading workers.

Every forward pass timed here is timed between device synchronisations (:class:`Stopwatch`), so
the clock sees the device's work, not only its kernel launches.

Time budget. The default GPU run is sized to finish in about 4 minutes on one H100/H200 (the
sample slide written once, 10-20 s; then about a minute per model): modest tile counts, each
end-to-end run extracting ``ceil(15 s x pace / 560)`` copies of the slide (``--seconds``; the
pace is the slower of the model and a first one-slide run; at most ``--max-slides`` 200, so
112,000 tiles), 3 s model-only windows (``--model-seconds``), 2 runs per model
(``--repeats``). A model is not started once ``--budget-s`` (330 s, counted from the script's
start) minus an estimate of its length has passed, and is reported as skipped.
A model that fails is reported with its error and the run goes on. Each model's result is
printed to stderr as one JSON line as soon as it is measured (with a line per phase before);
the full report goes to stdout at the end (and to ``--out``, rewritten after each model).

Under ``torchrun`` (``LOCAL_RANK``/``WORLD_SIZE`` set) each rank measures on ``cuda:LOCAL_RANK``
(CPU ranks share the cores; ``--share-gpus`` puts more ranks than GPUs on the GPUs in turn) at
the same time as the others; rank 0 collects every rank's result through files in a shared
folder (no collective, so no NCCL) and prints them with the sums of the ranks' tiles/s. Across
nodes pass ``--shared-dir`` on a shared file system.

Usage:
    python benchmarks/gpu_throughput.py --out gpu.json       # one GPU, about 4 minutes
    python benchmarks/gpu_throughput.py --models uni --precision fp16 --compile
    torchrun --nproc-per-node=4 benchmarks/gpu_throughput.py
    python benchmarks/gpu_throughput.py --device cpu --smoke   # a tiny check, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import histobag
from histobag.engine import Job, auto_workers, run
from histobag.extractors.base import cpu_supports_bf16
from histobag.extractors.device import cuda_supports_bf16
from histobag.files import write_json_atomic
from histobag.io.bag_writers import PtBagWriter
from histobag.slide.samples import sample_slide
from histobag.tile_readers import OpenWSI

DEFAULT_MODELS = ["resnet50_imagenet", "uni", "h-optimus-0"]  # ResNet-50, ViT-L/16, ViT-g/14
VIT_L = "uni"  # the model the targets are about
SMOKE_MODELS = ["resnet18_imagenet"]
TILE_PX, TILE_UM = 224, 112  # 224 px at 0.5 mpp: read at level 0, no resize
SLIDE_SIZE = (16384, 12288)  # about 560 tissue tiles of 224 px
SMOKE_SLIDE_SIZE = (4096, 3072)  # 37 tiles
WAIT_S = 1800  # how long a rank waits for the others (a slide being written, results)
#: Targets of the CUDA path on one H100/H200 (issue 17).
TARGETS = {"vit_l_ratio_min": 0.85, "busy_fraction_min": 0.9, "second_run_first_batch_max_s": 0.5}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- timing ---------------------------------------------------------------------------------


def synchronize(device: torch.device | str) -> None:
    """Wait until ``device`` has finished the work queued on it (a no-op on a CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Stopwatch:
    """Wall seconds of a ``with`` block, the device's queued work included.

    The device is synchronised before the clock starts (earlier work does not count) and
    before it stops (the block's work does). ``started``/``stopped`` are ``perf_counter``
    times, ``seconds`` their difference.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.started = self.stopped = self.seconds = math.nan

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.stopped = time.perf_counter()
        self.seconds = self.stopped - self.started


class ForwardMeter:
    """Records an extractor's model calls while in its ``with`` block.

    For each ``forward_batch`` call: its host start time (``starts``) and its tiles
    (``tiles``); :meth:`busy_seconds` is the device's time inside the calls. On CUDA that is
    measured with a ``torch.cuda.Event`` pair recorded on the device's current stream around
    each call (the GPU's own time, read after the run); elsewhere with the host clock around
    each call, the device synchronised before the clock stops.
    """

    def __init__(self, extractor: Any) -> None:
        self.extractor = extractor
        self.device = torch.device(extractor.device)
        self.starts: list[float] = []
        self.tiles: list[int] = []
        self._events: list[tuple[Any, Any]] = []
        self._host_busy = 0.0
        self._shadowed: Any = None

    def __enter__(self) -> ForwardMeter:
        fe = self.extractor
        self._shadowed = vars(fe).get("forward_batch")  # an instance attribute we replace
        forward = fe.forward_batch
        cuda = self.device.type == "cuda"

        def measured(batch: torch.Tensor) -> torch.Tensor:
            self.starts.append(time.perf_counter())
            self.tiles.append(len(batch))
            if cuda:
                stream = torch.cuda.current_stream(self.device)
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record(stream)
                out = forward(batch)
                end.record(stream)
                self._events.append((start, end))
                return out
            begin = time.perf_counter()
            out = forward(batch)
            synchronize(self.device)
            self._host_busy += time.perf_counter() - begin
            return out

        fe.forward_batch = measured
        return self

    def __exit__(self, *exc: object) -> None:
        if self._shadowed is None:
            del self.extractor.forward_batch  # back to the class's method
        else:
            self.extractor.forward_batch = self._shadowed

    def busy_seconds(self) -> float:
        """The device's seconds inside the recorded calls."""
        if not self._events:
            return self._host_busy
        synchronize(self.device)  # every event has happened
        return sum(start.elapsed_time(end) for start, end in self._events) / 1000


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


def _wait(done: Callable[[], bool], what: str, fail: bool = True) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            if fail:
                raise TimeoutError(f"gave up waiting for the other ranks ({what})")
            return
        time.sleep(0.2)


def _cores() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return cores or os.cpu_count() or 1


def _device(name: str | None, ranks: Ranks, share_gpus: bool = False) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and ranks.world > 1:
        gpus = torch.cuda.device_count()
        if ranks.local_rank >= gpus and not share_gpus:
            raise SystemExit(
                f"rank {ranks.rank}: LOCAL_RANK {ranks.local_rank} but this node has "
                f"{gpus} GPU(s); use --nproc-per-node at most that, or --share-gpus"
            )
        device = torch.device("cuda", ranks.local_rank % gpus)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "cpu" and ranks.local_world > 1:  # CPU ranks split the cores
        torch.set_num_threads(max(1, _cores() // ranks.local_world))
    return device


def _workers(workers: str, device: torch.device, ranks: Ranks) -> int:
    """Reading workers per rank: ``"auto"`` as the engine decides for one process, on this
    rank's share of the host cores when several ranks share a node."""
    if workers != "auto":
        return int(workers)
    if ranks.local_world == 1:
        return auto_workers(device)
    share = max(1, _cores() // ranks.local_world)
    if device.type == "cpu":  # the rank's model threads take its share
        return 0 if share <= 4 else min(4, share // 4)
    return max(1, min(8, share - 1))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """What ``device`` is: its name, and for CUDA its compute capability, memory, CUDA and
    cuDNN versions and bf16 support; the host's CPU and cores in every case."""
    info: dict[str, Any] = {
        "type": device.type,
        "torch": torch.__version__,
        "cpu_name": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "usable_cores": _cores(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        bf16 = cuda_supports_bf16(device)  # native only, as precision="auto" decides
        info.update(
            name=props.name,
            index=device.index if device.index is not None else torch.cuda.current_device(),
            compute_capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            gpus_on_node=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=bf16,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
    elif device.type == "cpu":
        info.update(name=info["cpu_name"], bf16_supported=cpu_supports_bf16())
    else:
        info.update(name=f"{device.type} ({platform.machine()})")
    return info


# -- measurements ---------------------------------------------------------------------------


def _slide(folder: Path, size: tuple[int, int], ranks: Ranks) -> Path:
    """The sample slide, written once per node (by local rank 0; the others wait for it)."""
    path = folder / f"gpu-bench-{size[0]}x{size[1]}-jpeg.svs"
    if not path.exists() and ranks.local_rank == 0:
        sample_slide(path, size=size, seed=0, compression="jpeg")  # written atomically
    _wait(path.exists, "the sample slide")
    return path


def _extractor(name: str, device: torch.device, args: argparse.Namespace) -> Any:
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
    synchronize(device)
    return fe


def _model_only(fe: Any, batch_size: int, seconds: float) -> dict[str, float]:
    """Tiles/s of preprocessing + model on a random uint8 batch already on the device, and
    the share of the window the device spent inside the model calls.

    The batches are queued back to back (the host never waits for the device inside the
    window, so on a GPU this is the model's own pace); the features stay on the device (taking
    them to the host costs a few MB/s, which the engine overlaps with the next batch).
    """
    batch = torch.randint(0, 256, (batch_size, 3, TILE_PX, TILE_PX), dtype=torch.uint8)
    batch = batch.to(fe.device)
    n = 0
    with ForwardMeter(fe) as meter, Stopwatch(fe.device) as clock:
        while n < 2 or time.perf_counter() - clock.started < seconds:
            fe.forward_batch(batch)
            n += 1
    return {
        "tiles_per_s": n * batch_size / clock.seconds,
        "busy_fraction": meter.busy_seconds() / clock.seconds,
    }


class _CountingSink:
    """Writes each bag (as extraction does) and counts the tiles."""

    def __init__(self, folder: Path) -> None:
        self.writer = PtBagWriter(folder)
        self.tiles = 0

    def finish(self, result: Any) -> None:
        self.writer.write(result.key, result.features, result.top_left, result.geometry)
        self.tiles += len(result.features)

    def fail(self, key: str, reason: str) -> None:
        raise RuntimeError(f"{key}: {reason}")


def _end_to_end(fe: Any, slide: Path, n_slides: int, args: argparse.Namespace) -> dict:
    """Tiles/s of the engine from opening the slides to the bags written, the device's busy
    share of the run, and the time from calling the engine to its first model call."""
    out = Path(tempfile.mkdtemp(prefix="histobag-gpu-bench-"))
    sink = _CountingSink(out)
    jobs = [Job(f"slide{i}", OpenWSI(str(slide), TILE_PX, TILE_UM)) for i in range(n_slides)]
    try:
        with ForwardMeter(fe) as meter, Stopwatch(fe.device) as clock:
            run(
                fe,
                jobs,
                sink,
                batch_size=args.batch_size,
                num_workers=args.workers,
                spill_dir=out,
            )
        busy = meter.busy_seconds()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    starts, tiles = meter.starts, meter.tiles
    if not starts:
        raise RuntimeError(f"the engine made no model call on {slide.name} (no tissue tiles?)")
    # Steady state: from the first model call to the last (the tiles of all calls but the
    # last, over the time between their starts), without worker start-up and the first open.
    steady = sum(tiles[:-1]) / (starts[-1] - starts[0]) if len(starts) > 2 else None
    return {
        "tiles": sink.tiles,
        "seconds": clock.seconds,
        "tiles_per_s": sink.tiles / clock.seconds,
        "steady_tiles_per_s": steady,
        "first_batch_s": starts[0] - clock.started,
        "busy_fraction": busy / clock.seconds,
        "steady_busy_fraction": busy / (clock.stopped - starts[0]),
    }


def _rounded(values: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in values.items()}


def _median(values: list[float | None], digits: int = 3) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), digits) if present else None


def measure_model(
    name: str,
    device: torch.device,
    slide: Path,
    args: argparse.Namespace,
    engine_runs: list[dict] | None = None,
) -> dict:
    """M E M E ... M for one model, on this process's device.

    ``engine_runs`` collects each engine run's ``first_batch_s`` in the order of the process's
    runs (for the report's start-up figures).
    """
    engine_runs = [] if engine_runs is None else engine_runs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    _log(f"  {name}: building (random weights) and warming up")
    with Stopwatch(device) as build:
        fe = _extractor(name, device, args)
    # A first run on one slide: warms the page cache and sizes the measured runs.
    _log(f"  {name}: a first end-to-end run on one slide")
    probe = _end_to_end(fe, slide, 1, args)
    engine_runs.append({"model": name, "first_batch_s": round(probe["first_batch_s"], 3)})
    model = [_model_only(fe, args.batch_size, args.model_seconds)]
    tiles_per_slide = max(1, probe["tiles"])
    # The run's pace is the slower of the model and the pipeline (the probe's steady pace).
    pace = min(model[0]["tiles_per_s"], probe["steady_tiles_per_s"] or math.inf)
    n_slides = min(args.max_slides, max(1, math.ceil(args.seconds * pace / tiles_per_slide)))
    runs = []
    for i in range(args.repeats):
        _log(f"  {name}: end-to-end run {i + 1}/{args.repeats} ({n_slides} slides)")
        runs.append(_end_to_end(fe, slide, n_slides, args))
        engine_runs.append({"model": name, "first_batch_s": round(runs[-1]["first_batch_s"], 3)})
        model.append(_model_only(fe, args.batch_size, args.model_seconds))
    tps = [m["tiles_per_s"] for m in model]
    reference = [(tps[i] + tps[i + 1]) / 2 for i in range(args.repeats)]
    ratios = [e2e["tiles_per_s"] / ref for e2e, ref in zip(runs, reference)]
    steady = [
        e2e["steady_tiles_per_s"] / ref if e2e["steady_tiles_per_s"] is not None else None
        for e2e, ref in zip(runs, reference)
    ]
    result = {
        "precision": fe.precision,
        "compiled": fe.compiled,
        "model_only_tiles_per_s": _median(tps, 2),
        "end_to_end_tiles_per_s": _median([e["tiles_per_s"] for e in runs], 2),
        "ratio": _median(ratios),
        "steady_ratio": _median(steady),
        "busy_fraction": _median([e["busy_fraction"] for e in runs]),
        "steady_busy_fraction": _median([e["steady_busy_fraction"] for e in runs]),
        "model_only_busy_fraction": _median([m["busy_fraction"] for m in model]),
        "first_batch_s": _median([e["first_batch_s"] for e in runs]),
        "probe_first_batch_s": round(probe["first_batch_s"], 3),
        "busy_measured_by": "cuda_events" if device.type == "cuda" else "host_clock",
        "tiles_per_slide": tiles_per_slide,
        "slides_per_run": n_slides,
        "build_seconds": round(build.seconds, 2),
        "model_only_runs": [_rounded(m) for m in model],
        "end_to_end_runs": [_rounded(e) for e in runs],
    }
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


def _model_estimate_s(args: argparse.Namespace) -> float:
    """About how long one model takes: its runs, model-only windows, build and first run."""
    return args.repeats * (args.seconds + args.model_seconds) + args.model_seconds + 30


def measure_models(
    names: list[str],
    device: torch.device,
    slide: Path,
    args: argparse.Namespace,
    report: dict,
    began: float,
    on_model: Callable[[str], None] = lambda name: None,
) -> None:
    """Measure each model into ``report["models"]``; a model that fails gets its error, one
    that would end past the time budget is skipped, and the others still run. ``on_model`` is
    called after each model with its name.

    Also fills ``report["startup"]`` from the process's engine runs.
    """
    engine_runs: list[dict] = []
    for name in names:
        elapsed = time.perf_counter() - began
        if args.budget_s and elapsed + _model_estimate_s(args) > args.budget_s:
            report["models"][name] = {
                "skipped": f"time budget: {elapsed:.0f} s of --budget-s {args.budget_s:g} used, "
                f"a model takes about {_model_estimate_s(args):.0f} s"
            }
        else:
            _log(f"{elapsed:6.1f} s: measuring {name} on {device}")
            try:
                report["models"][name] = measure_model(name, device, slide, args, engine_runs)
            except Exception as exc:  # the other models still get measured
                report["models"][name] = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc().strip().splitlines()[-12:],
                }
            finally:
                gc.collect()  # the extractor, before the next model's
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        report["startup"] = _startup(engine_runs, args.workers)
        _log(json.dumps({name: report["models"][name]}))
        on_model(name)


def _startup(engine_runs: list[dict], workers: int) -> dict:
    firsts = [r["first_batch_s"] for r in engine_runs]
    return {
        "workers": workers,
        "first_run_first_batch_s": firsts[0] if firsts else None,
        "second_run_first_batch_s": firsts[1] if len(firsts) > 1 else None,
        "runs": engine_runs,
    }


# -- report ---------------------------------------------------------------------------------


def _targets(report: dict) -> dict:
    """Whether the measured figures meet :data:`TARGETS` (``None``: not measured)."""
    vit_l = report["models"].get(VIT_L, {})
    second = report.get("startup", {}).get("second_run_first_batch_s")

    def at_least(value: float | None, target: float) -> bool | None:
        return None if value is None else value >= target

    return {
        **TARGETS,
        "apply": report["device"].startswith("cuda"),
        "vit_l_ratio_met": at_least(vit_l.get("ratio"), TARGETS["vit_l_ratio_min"]),
        "vit_l_busy_met": at_least(vit_l.get("busy_fraction"), TARGETS["busy_fraction_min"]),
        "second_run_first_batch_met": (
            None if second is None else second <= TARGETS["second_run_first_batch_max_s"]
        ),
    }


def _aggregate(results: list[dict]) -> dict:
    """The ranks' tiles/s summed per model (over the ranks that measured it)."""
    names = list(dict.fromkeys(name for r in results for name in r["models"]))
    out = {}
    for name in names:
        entries = [(r["rank"], r["models"].get(name, {})) for r in results]
        ok = [m for _, m in entries if "end_to_end_tiles_per_s" in m]
        failed = [rank for rank, m in entries if "end_to_end_tiles_per_s" not in m]
        if not ok:
            out[name] = {"error": "no rank measured it", "failed_ranks": failed}
            continue
        model = sum(m["model_only_tiles_per_s"] for m in ok)
        e2e = sum(m["end_to_end_tiles_per_s"] for m in ok)
        out[name] = {
            "ranks": len(ok),
            "model_only_tiles_per_s": round(model, 2),
            "end_to_end_tiles_per_s": round(e2e, 2),
            "ratio": round(e2e / model, 3),
        }
        busy = [m["busy_fraction"] for m in ok if m.get("busy_fraction") is not None]
        if busy:
            out[name]["busy_fraction_min"] = min(busy)
        if failed:
            out[name]["failed_ranks"] = failed
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--models", nargs="+", default=None, help=f"default {DEFAULT_MODELS}")
    parser.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32")
    parser.add_argument("--workers", default="auto", help="reading workers per rank, or auto")
    parser.add_argument(
        "--precision", default=None, help="auto, fp32, bf16 or fp16; default bf16 on CUDA, auto"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs per model")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of a run (about)")
    parser.add_argument("--model-seconds", type=float, default=3.0, help="model-only window")
    parser.add_argument("--max-slides", type=int, default=200, help="slides per run, at most")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=330.0,
        help="start no model that would end after this many seconds (0: no limit)",
    )
    parser.add_argument("--out", default=None, help="also write the report here (JSON)")
    parser.add_argument("--shared-dir", default=None, help="results folder seen by all ranks")
    parser.add_argument(
        "--share-gpus", action="store_true", help="more ranks than GPUs: share them in turn"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny settings, seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models = args.models or SMOKE_MODELS
        args.batch_size = args.batch_size or 8
        args.repeats, args.seconds, args.model_seconds, args.max_slides = 1, 0.0, 0.3, 1
    return args


def main(argv: list[str] | None = None) -> None:
    began = time.perf_counter()
    args = _parse(argv)
    ranks = Ranks(args.shared_dir)
    device = _device(args.device, ranks, args.share_gpus)
    args.models = args.models or DEFAULT_MODELS
    args.batch_size = args.batch_size or (256 if device.type == "cuda" else 32)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "auto")
    args.workers = _workers(args.workers, device, ranks)
    size = SMOKE_SLIDE_SIZE if args.smoke else SLIDE_SIZE
    folder = Path(tempfile.gettempdir()) / "histobag-bench"
    folder.mkdir(exist_ok=True)
    _log(f"{time.perf_counter() - began:6.1f} s: rank {ranks.rank}: sample slide {size}")
    slide = _slide(folder, size, ranks)
    ranks.barrier("start")  # every rank measures at the same time as the others
    report: dict[str, Any] = {
        "rank": ranks.rank,
        "device": str(device),
        "device_info": device_info(device),
        "histobag": histobag.__version__,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "precision": args.precision,
        "compile": args.compile,
        "smoke": args.smoke,
        "slide_size": list(size),
        "settings": {
            "seconds": args.seconds,
            "model_seconds": args.model_seconds,
            "repeats": args.repeats,
            "budget_s": args.budget_s,
        },
        "models": {},
    }

    def save(_: str | None = None) -> None:
        report["targets"] = _targets(report)
        report["elapsed_s"] = round(time.perf_counter() - began, 1)
        if args.out and ranks.world == 1:
            write_json_atomic(args.out, report)

    measure_models(args.models, device, slide, args, report, began, save)
    save()
    results = ranks.gather(report)
    if results is None:
        return
    if ranks.world == 1:
        print(json.dumps(report, indent=2))
        return
    combined = {
        "world_size": ranks.world,
        "ranks_reported": [r["rank"] for r in results],
        "aggregate": _aggregate(results),
        "per_rank": results,
    }
    if args.out:
        write_json_atomic(args.out, combined)
    print(json.dumps(combined, indent=2))


if __name__ == "__main__":
    main()
