"""Start-up time of `histobag list` and of `import histobag` (goal: under 1 s). Prints JSON.

Usage: python benchmarks/startup.py [--repeats 5]
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time


def _time(cmd: list[str], repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        runs.append(time.perf_counter() - start)
    return {
        "median_s": round(statistics.median(runs), 4),
        "min_s": round(min(runs), 4),
        "max_s": round(max(runs), 4),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cli = shutil.which("histobag") or "histobag"
    result = {
        "histobag_list": _time([cli, "list"], args.repeats),
        "import_histobag": _time([sys.executable, "-c", "import histobag"], args.repeats),
        "import_and_list": _time(
            [sys.executable, "-c", "import histobag; histobag.list_extractors()"], args.repeats
        ),
        "python_baseline": _time([sys.executable, "-c", "pass"], args.repeats),
        "goal_s": 1.0,
    }
    result["meets_goal"] = result["histobag_list"]["median_s"] < result["goal_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
