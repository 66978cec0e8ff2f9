"""Start-up of a run with reading workers: seconds from calling the engine to the model's first
batch, for each way of starting workers. Prints JSON.

The engine starts workers by ``fork`` for CPU models and from a ``forkserver`` (histobag
preloaded) for accelerators (:mod:`histobag.worker_start`); ``spawn`` is shown for comparison.
Each start method runs in its own process: a first run (which for the forkserver also starts
the server) and then ``--runs - 1`` more runs in the same process. The goal (issue 17): at most
0.5 s to the first batch after the first run in a process, with the accelerators' start method.

Usage: python benchmarks/first_batch.py [--workers 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 0.5
TILE_PX, TILE_UM = 64, 64


def child(method: str, slide: str, workers: int, runs: int) -> list[float]:
    """Seconds to the first batch of each of ``runs`` runs in this process."""
    import torch

    import histobag
    import histobag.engine
    from histobag.engine import CollectSink, Job, run
    from histobag.tile_readers import OpenWSI

    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context = histobag.worker_start.worker_context(torch.device("cuda"))  # with preload
    histobag.engine.worker_context = lambda device: context  # this benchmark's start method
    extractor = histobag.build_feature_extractor(
        "resnet18_imagenet", weights="random", tile_px=TILE_PX, device="cpu"
    )
    first = []
    forward = extractor.forward_batch

    def timed(batch):
        if len(first) == len(seconds):
            first.append(time.perf_counter())
        return forward(batch)

    extractor.forward_batch = timed
    seconds: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        run(
            extractor,
            [Job("bench", OpenWSI(slide, TILE_PX, TILE_UM))],
            CollectSink(),
            batch_size=8,
            num_workers=workers,
        )
        seconds.append(first[-1] - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, slide = args.child
        print(json.dumps(child(method, slide, args.workers, args.runs)))
        return
    slide = Path(tempfile.gettempdir()) / "histobag-bench" / "first-batch.svs"
    if not slide.exists():
        slide.parent.mkdir(exist_ok=True)
        from histobag.slide.samples import sample_slide

        sample_slide(slide, size=(1024, 768), seed=0)
    report: dict = {"workers": args.workers, "runs": args.runs, "goal_s": GOAL_S, "methods": {}}
    for method in ("fork", "forkserver", "spawn"):
        if method not in multiprocessing.get_all_start_methods():
            continue
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                method,
                str(slide),
                "--workers",
                str(args.workers),
                "--runs",
                str(args.runs),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds = json.loads(out.stdout.strip().splitlines()[-1])
        report["methods"][method] = {
            "first_run_s": round(seconds[0], 3),
            "later_runs_s": [round(s, 3) for s in seconds[1:]],
        }
    later = report["methods"].get("forkserver", {}).get("later_runs_s", [])
    report["accelerator_later_runs_max_s"] = max(later) if later else None
    report["meets_goal"] = bool(later) and max(later) <= GOAL_S
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
