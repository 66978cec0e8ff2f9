"""Time and peak memory of the full-size GigaPath slide encoder (random weights). Prints JSON.

Each (tiles, precision) case runs in a fresh process, so its peak RSS (``ru_maxrss``) is its
own. ``rss_model_mib`` is the RSS after building the model, before the forward pass.

Usage: python benchmarks/slide_encoder.py [--tiles 10000 50000] [--precision fp32 bf16]
       [--threads N] [--layers 12]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(tiles: int, precision: str, threads: int, layers: int) -> dict:
    import torch

    from histobag.extractors.base import cpu_supports_bf16
    from histobag_noncommercial.gigapath_slide import SlideEncoder, SlideEncoderConfig

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SlideEncoder(SlideEncoderConfig(depth=layers)).eval()
    side = int(tiles**0.5) + 1  # tiles scattered over a square grid, in random order
    cells = torch.randperm(side * side)[:tiles]
    coords = torch.stack([cells // side, cells % side], dim=-1)[None] * 256
    features = torch.randn(1, tiles, 1536)
    bf16 = precision == "bf16"
    if bf16 and not cpu_supports_bf16():
        return {"tiles": tiles, "precision": precision, "skipped": "no native bf16 on this CPU"}
    rss_model = _rss_mib()

    def forward(n: int) -> None:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            model(features[:, :n], coords[:, :n])

    forward(64)  # warm-up: kernel selection, allocator
    start = time.perf_counter()
    forward(tiles)
    seconds = time.perf_counter() - start
    return {
        "tiles": tiles,
        "precision": precision,
        "layers": layers,
        "seconds": round(seconds, 2),
        "tiles_per_s": round(tiles / seconds, 1),
        "rss_model_mib": round(rss_model),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiles", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), args.one[1], args.threads, args.layers)))
        return
    import torch

    results = []
    for tiles in args.tiles:
        for precision in args.precision:
            cmd = [sys.executable, __file__, "--one", str(tiles), precision]
            cmd += ["--threads", str(args.threads), "--layers", str(args.layers)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "model": "gigapath.slide (12 layers, 768-d, random weights)",
                "device": "cpu",
                "cpu": platform.processor() or platform.machine(),
                "threads": args.threads,
                "torch": torch.__version__,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
