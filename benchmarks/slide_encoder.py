"""Time and peak memory of the full-size GigaPath slide encoder (random weights). Prints JSON.

Each (tiles, precision) case runs in a fresh process, so its peak memory is its own: the host's
peak RSS (``ru_maxrss``) and, on CUDA, the GPU's peak allocated memory. ``rss_model_mib`` is
the RSS after building the model, before the forward pass. Each forward pass is timed between
device synchronisations (``Stopwatch`` of ``gpu_throughput.py``), after a warm-up pass on 64
tiles; ``seconds`` is the median of ``--repeats`` passes (default 3 on a GPU, 1 on a CPU).

Usage: python benchmarks/slide_encoder.py [--device cuda] [--tiles 10000 50000]
       [--precision fp32 bf16] [--threads N] [--layers 12] [--repeats N]
       python benchmarks/slide_encoder.py --device cpu --smoke   # a tiny check, seconds
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark's timing

SMOKE = {"tiles": [256], "precision": ["fp32"], "layers": 1, "repeats": 2}


def _rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _device_name(name: str) -> str:
    """``auto``: cuda if available, else mps if available, else cpu."""
    import torch

    if name != "auto":
        return str(torch.device(name))
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def run_one(
    tiles: int, precision: str, threads: int, layers: int, device_name: str, repeats: int
) -> dict:
    """One case in this process: build the encoder, warm it up, time ``repeats`` passes."""
    import torch
    from gpu_throughput import Stopwatch

    from histobag.extractors.base import precision_unsupported
    from histobag_noncommercial.gigapath_slide import SlideEncoder, SlideEncoderConfig

    device = torch.device(device_name)
    torch.set_num_threads(threads)
    case = {"tiles": tiles, "precision": precision, "layers": layers}
    bf16 = precision == "bf16"
    why = precision_unsupported(device, "bfloat16") if bf16 else None
    if why is not None:
        return {**case, "skipped": why}
    torch.manual_seed(0)
    model = SlideEncoder(SlideEncoderConfig(depth=layers)).eval().to(device)
    side = int(tiles**0.5) + 1  # tiles scattered over a square grid, in random order
    cells = torch.randperm(side * side)[:tiles]
    coords = (torch.stack([cells // side, cells % side], dim=-1)[None] * 256).to(device)
    features = torch.randn(1, tiles, 1536).to(device)
    rss_model = _rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def forward(n: int) -> None:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            model(features[:, :n], coords[:, :n])

    forward(64)  # warm-up: kernel selection, allocator
    runs = []
    for _ in range(repeats):
        with Stopwatch(device) as clock:
            forward(tiles)
        runs.append(clock.seconds)
    seconds = statistics.median(runs)
    result = {
        **case,
        "device": str(device),
        "seconds": round(seconds, 3),
        "runs": [round(s, 3) for s in runs],
        "tiles_per_s": round(tiles / seconds, 1),
        "rss_model_mib": round(rss_model),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if device.type == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a device")
    parser.add_argument("--tiles", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=None, help="default 3 on a GPU, 1")
    parser.add_argument("--smoke", action="store_true", help=f"tiny settings: {SMOKE}")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.tiles, args.precision = SMOKE["tiles"], SMOKE["precision"]
        args.layers, args.repeats = SMOKE["layers"], args.repeats or SMOKE["repeats"]
    device = _device_name(args.device)
    repeats = args.repeats or (1 if device == "cpu" else 3)
    if args.one:
        tiles, precision = int(args.one[0]), args.one[1]
        print(json.dumps(run_one(tiles, precision, args.threads, args.layers, device, repeats)))
        return
    import torch
    from gpu_throughput import device_info

    results = []
    for tiles in args.tiles:
        for precision in args.precision:
            cmd = [sys.executable, __file__, "--one", str(tiles), precision, "--device", device]
            cmd += ["--threads", str(args.threads), "--layers", str(args.layers)]
            cmd += ["--repeats", str(repeats)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "model": f"gigapath.slide ({args.layers} layers, 768-d, random weights)",
                "device": device,
                "device_info": device_info(torch.device(device)),
                "threads": args.threads,
                "repeats": repeats,
                "smoke": args.smoke,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
