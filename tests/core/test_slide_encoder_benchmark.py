"""``benchmarks/slide_encoder.py`` runs on a chosen device (on the CPU, with ``--smoke``),
reports that device, and times each forward pass between device synchronisations."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "slide_encoder.py"


@pytest.fixture
def bench(monkeypatch):
    """The script as a module; the benchmarks folder it puts on ``sys.path`` and the sibling
    module it imports are gone again after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    sibling = sys.modules.get("gpu_throughput")
    spec = importlib.util.spec_from_file_location("slide_encoder_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    if sibling is None:
        sys.modules.pop("gpu_throughput", None)


@pytest.mark.slow
def test_smoke_run_on_the_cpu_reports_the_device_and_a_timed_pass():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["device"] == "cpu" and report["smoke"] is True
    info = report["device_info"]
    assert info["type"] == "cpu" and info["name"] and info["cpu_count"] == os.cpu_count()
    assert info["torch"] == torch.__version__
    (case,) = report["results"]
    assert (case["tiles"], case["precision"], case["layers"]) == (256, "fp32", 1)
    assert case["device"] == "cpu"
    assert len(case["runs"]) == report["repeats"] == 2
    assert case["seconds"] == pytest.approx(statistics.median(case["runs"]), abs=1e-3)
    assert case["tiles_per_s"] == pytest.approx(256 / case["seconds"], rel=0.01)
    assert case["peak_rss_mib"] >= case["rss_model_mib"] > 0


def test_each_pass_is_timed_by_the_synchronising_stopwatch(bench, monkeypatch):
    import gpu_throughput  # the sibling benchmark, from the folder the script added

    timed = []

    class Recording(gpu_throughput.Stopwatch):
        def __exit__(self, *exc):
            super().__exit__(*exc)
            timed.append((self.device, self.seconds))

    monkeypatch.setattr(gpu_throughput, "Stopwatch", Recording)
    result = bench.run_one(16, "fp32", 1, 1, "cpu", 3)
    assert [device for device, _ in timed] == [torch.device("cpu")] * 3
    assert result["runs"] == [round(seconds, 3) for _, seconds in timed]
    assert result["device"] == "cpu" and "peak_gpu_mib" not in result


def test_auto_device_prefers_cuda_then_mps_then_cpu(bench, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert bench._device_name("auto") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert bench._device_name("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bench._device_name("auto") == "cuda"
    assert bench._device_name("cuda:1") == "cuda:1"  # an explicit device is kept
