"""``benchmarks/gpu_throughput.py`` runs (on the CPU, with ``--smoke``) and reports what it
promises; its torchrun gathering collects every rank's result."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_throughput.py"
DIST_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_run_reports_positive_paired_throughput():
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["device"] == "cpu" and report["device_name"]
    assert report["torch"] == torch.__version__
    assert report["batch_size"] > 0 and report["workers"] >= 0
    assert report["precision"] == "auto" and report["compile"] is False
    assert len(report["models"]) == 1
    (model,) = report["models"].values()
    assert model["precision"] in ("float32", "bfloat16")
    for key in ("model_only_tiles_per_s", "end_to_end_tiles_per_s", "ratio", "steady_ratio"):
        assert model[key] > 0, key
    # One end-to-end run between two model-only runs: the ratio is the run over their mean.
    (e2e,) = model["end_to_end_runs"]
    mean = sum(model["model_only_runs"]) / 2
    assert model["ratio"] == pytest.approx(e2e["tiles_per_s"] / mean, rel=0.01)
    assert e2e["tiles"] == model["tiles_per_slide"] * model["slides_per_run"] > 0


def test_rank_zero_gathers_every_rank_and_sums_them(tmp_path, monkeypatch):
    bench = _load_benchmark()
    monkeypatch.setattr(bench, "WAIT_S", 5)
    results = {}
    for rank in (1, 0):  # rank 1 reports first; rank 0 collects
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ranks = bench.Ranks(str(tmp_path / "shared"))
        tiles = 100.0 * (rank + 1)
        result = {
            "rank": rank,
            "models": {"m": {"model_only_tiles_per_s": tiles, "end_to_end_tiles_per_s": tiles / 2}},
        }
        results[rank] = ranks.gather(result)
    assert results[1] is None
    assert [r["rank"] for r in results[0]] == [0, 1]
    aggregate = bench._aggregate(results[0])
    assert aggregate["m"]["model_only_tiles_per_s"] == 300.0
    assert aggregate["m"]["end_to_end_tiles_per_s"] == 150.0
    assert aggregate["m"]["ratio"] == 0.5
    assert not (tmp_path / "shared").exists()  # rank 0 cleans the shared folder up


def test_a_rank_that_never_reports_is_left_out_not_waited_for_forever(tmp_path, monkeypatch):
    bench = _load_benchmark()
    monkeypatch.setattr(bench, "WAIT_S", 0.5)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ranks = bench.Ranks(str(tmp_path / "shared"))
    gathered = ranks.gather({"rank": 0, "models": {}})
    assert [r["rank"] for r in gathered] == [0]


def test_the_barrier_waits_for_every_rank(tmp_path, monkeypatch):
    bench = _load_benchmark()
    monkeypatch.setattr(bench, "WAIT_S", 0.5)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ranks = bench.Ranks(str(tmp_path))
    with pytest.raises(TimeoutError, match="start"):
        ranks.barrier("start")
    (tmp_path / "start-1.json").write_text("{}")  # rank 1 arrives
    ranks.barrier("start")
