"""``benchmarks/gpu_throughput.py`` runs (on the CPU, with ``--smoke``) and reports what it
promises; its timing synchronises the device it measures; a failing model or a spent time
budget does not stop the run; its torchrun gathering collects every rank's result."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import ClassVar

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
def test_smoke_run_reports_positive_paired_throughput(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report  # --out holds the same report
    # The real device, described.
    assert report["device"] == "cpu"
    info = report["device_info"]
    assert info["type"] == "cpu" and info["name"] and info["torch"] == torch.__version__
    assert info["cpu_count"] == os.cpu_count() and info["usable_cores"] >= 1
    assert isinstance(info["bf16_supported"], bool)
    assert report["batch_size"] > 0 and report["workers"] >= 0
    assert report["precision"] == "auto" and report["compile"] is False
    assert len(report["models"]) == 1
    name, model = next(iter(report["models"].items()))
    # Each model's result went to stderr as one JSON line as soon as it was measured.
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert lines == [{name: model}]
    assert model["precision"] in ("float32", "bfloat16")
    for key in ("model_only_tiles_per_s", "end_to_end_tiles_per_s", "ratio", "steady_ratio"):
        assert model[key] > 0, key
    # One end-to-end run between two model-only runs: the ratio is the run over their mean.
    (e2e,) = model["end_to_end_runs"]
    first, last = (m["tiles_per_s"] for m in model["model_only_runs"])
    assert model["ratio"] == pytest.approx(e2e["tiles_per_s"] / ((first + last) / 2), rel=0.01)
    assert e2e["tiles"] == model["tiles_per_slide"] * model["slides_per_run"] > 0
    assert e2e["tiles_per_s"] == pytest.approx(e2e["tiles"] / e2e["seconds"], rel=0.01)
    # Busy fractions: the host clock on a CPU, a share of the run's wall time.
    assert model["busy_measured_by"] == "host_clock"
    for key in ("busy_fraction", "steady_busy_fraction", "model_only_busy_fraction"):
        assert 0 < model[key] <= 1, key
    assert model["busy_fraction"] == e2e["busy_fraction"]
    assert e2e["steady_busy_fraction"] >= e2e["busy_fraction"]  # a shorter window, same time
    # Start-up to the first batch: the process's first engine run (the probe) and its second.
    assert 0 < model["probe_first_batch_s"] < e2e["seconds"] + model["build_seconds"] + 60
    assert 0 < e2e["first_batch_s"] < e2e["seconds"]
    startup = report["startup"]
    assert startup["workers"] == report["workers"]
    assert startup["first_run_first_batch_s"] == model["probe_first_batch_s"]
    assert startup["second_run_first_batch_s"] == round(e2e["first_batch_s"], 3)
    assert [r["model"] for r in startup["runs"]] == [name, name]
    assert report["targets"]["apply"] is False  # the targets are a GPU's
    assert report["elapsed_s"] >= model["seconds"] > 0


def test_synchronize_waits_for_the_given_cuda_device(monkeypatch):
    bench = _load_benchmark()
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    bench.synchronize(torch.device("cuda:1"))
    assert calls == [torch.device("cuda:1")]
    bench.synchronize("mps")
    assert calls[-1] == "mps"
    bench.synchronize(torch.device("cpu"))  # nothing to wait for
    assert len(calls) == 2


def test_a_cuda_device_is_described_by_its_gpu(monkeypatch):
    bench = _load_benchmark()
    props = types.SimpleNamespace(
        name="NVIDIA H200", major=9, minor=0, total_memory=140 * 2**30, multi_processor_count=132
    )
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: asked.append(d) or props)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: (props.major, props.minor))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    info = bench.device_info(torch.device("cuda:1"))
    assert asked == [torch.device("cuda:1")]
    assert (info["type"], info["name"], info["index"]) == ("cuda", "NVIDIA H200", 1)
    assert info["compute_capability"] == "9.0" and info["memory_gib"] == 140.0
    assert info["bf16_supported"] is True and info["gpus_on_node"] == 2
    props.major = 7  # a V100: bf16 only emulated, which precision="auto" does not use
    assert bench.device_info(torch.device("cuda:1"))["bf16_supported"] is False
    assert info["cuda"] == torch.version.cuda and info["torch"] == torch.__version__
    assert info["cpu_count"] == os.cpu_count()


def test_the_stopwatch_synchronizes_before_starting_and_before_stopping(monkeypatch):
    bench = _load_benchmark()
    now = [0.0]
    synced = []

    def synchronize(device=None):
        synced.append(device)
        now[0] += 1.0  # the device's queued work takes a second

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    with bench.Stopwatch(torch.device("cuda:1")) as clock:
        now[0] += 0.5  # the block's own host time
    assert synced == [torch.device("cuda:1")] * 2
    # Earlier work (the first second) is not counted; the block's queued work (the last) is.
    assert (clock.started, clock.stopped, clock.seconds) == (1.0, 2.5, 1.5)


class _FakeEvent:
    """A ``torch.cuda.Event`` that records where it was recorded; each pair spans 2 ms."""

    log: ClassVar[list] = []
    synced: ClassVar[list] = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.stream = None

    def record(self, stream=None) -> None:
        self.stream = stream
        self.log.append(("record", stream))

    def elapsed_time(self, end: _FakeEvent) -> float:
        assert self.synced, "events read before the device was synchronised"
        assert self.stream is not None and end.stream is self.stream
        return 2.0


class _Extractor:
    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.calls = 0

    def forward_batch(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        _FakeEvent.log.append(("forward", len(batch)))
        return torch.zeros(len(batch), 4)


def test_the_forward_meter_times_cuda_model_calls_with_events_on_the_device_stream(monkeypatch):
    bench = _load_benchmark()
    _FakeEvent.log, _FakeEvent.synced = [], []
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: ("stream", device))
    monkeypatch.setattr(
        torch.cuda, "synchronize", lambda device=None: _FakeEvent.synced.append(device)
    )
    fe = _Extractor("cuda:1")
    with bench.ForwardMeter(fe) as meter:
        for size in (8, 3):
            assert fe.forward_batch(torch.zeros(size, 3, 4, 4)).shape == (size, 4)
    assert "forward_batch" not in vars(fe) and fe.calls == 2  # the class's method is back
    stream = ("stream", torch.device("cuda:1"))
    record = ("record", stream)
    assert _FakeEvent.log == [record, ("forward", 8), record, record, ("forward", 3), record]
    assert meter.tiles == [8, 3] and meter.starts == sorted(meter.starts)
    assert meter.busy_seconds() == pytest.approx(2 * 2.0 / 1000)
    assert _FakeEvent.synced == [torch.device("cuda:1")]


def test_the_forward_meter_restores_an_instance_forward(monkeypatch):
    bench = _load_benchmark()
    fe = _Extractor("cpu")
    own = fe.forward_batch
    fe.forward_batch = own  # an instance attribute, as another wrapper would leave
    with bench.ForwardMeter(fe) as meter:
        fe.forward_batch(torch.zeros(2, 3, 4, 4))
    assert vars(fe)["forward_batch"] is own
    assert meter.tiles == [2] and meter.busy_seconds() > 0


def _args(**overrides) -> argparse.Namespace:
    values = {"budget_s": 0.0, "repeats": 2, "seconds": 15.0, "model_seconds": 3.0, "workers": 3}
    return argparse.Namespace(**{**values, **overrides})


def test_a_failing_model_is_reported_and_the_others_still_run(monkeypatch):
    bench = _load_benchmark()

    def measure_model(name, device, slide, args, engine_runs):
        if name == "bad":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (pretend)")
        engine_runs.extend(
            [{"model": name, "first_batch_s": 2.0}, {"model": name, "first_batch_s": 0.25}]
        )
        return {"ratio": 0.9}

    monkeypatch.setattr(bench, "measure_model", measure_model)
    report, seen = {"models": {}}, []
    names = ["bad", "good"]
    bench.measure_models(names, torch.device("cpu"), Path("s"), _args(), report, 0.0, seen.append)
    assert seen == names
    assert report["models"]["bad"]["error"] == "OutOfMemoryError: CUDA out of memory (pretend)"
    assert "measure_model" in "\n".join(report["models"]["bad"]["traceback"])
    assert report["models"]["good"] == {"ratio": 0.9}
    startup = report["startup"]
    assert startup["workers"] == 3
    assert (startup["first_run_first_batch_s"], startup["second_run_first_batch_s"]) == (2.0, 0.25)


def test_models_that_would_end_past_the_budget_are_skipped(monkeypatch):
    bench = _load_benchmark()
    measured = []
    monkeypatch.setattr(bench, "measure_model", lambda name, *a: measured.append(name) or {})
    report = {"models": {}}
    args = _args(budget_s=60.0)  # a model takes about 2 * 18 + 3 + 30 = 69 s
    bench.measure_models(
        ["a", "b"], torch.device("cpu"), Path("s"), args, report, time.perf_counter()
    )
    assert measured == []
    assert all("time budget" in report["models"][n]["skipped"] for n in ("a", "b"))
    assert report["startup"]["first_run_first_batch_s"] is None
    args = _args(budget_s=200.0)  # room for the first model only
    began = time.perf_counter() - 100  # 100 s already spent
    bench.measure_models(["a"], torch.device("cpu"), Path("s"), args, report, began)
    assert measured == ["a"]


def test_the_targets_are_judged_on_the_vit_l():
    bench = _load_benchmark()
    report = {
        "device": "cuda:0",
        "models": {"uni": {"ratio": 0.9, "busy_fraction": 0.8}},
        "startup": {"second_run_first_batch_s": 0.7},
    }
    targets = bench._targets(report)
    assert targets["apply"] is True
    assert targets["vit_l_ratio_met"] is True and targets["vit_l_busy_met"] is False
    assert targets["second_run_first_batch_met"] is False
    report["models"]["uni"] = {"error": "failed"}
    assert bench._targets(report)["vit_l_ratio_met"] is None


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
        model = {"model_only_tiles_per_s": tiles, "end_to_end_tiles_per_s": tiles / 2}
        result = {"rank": rank, "models": {"m": {**model, "busy_fraction": 0.5 + rank / 10}}}
        if rank == 1:
            result["models"]["broken"] = {"error": "RuntimeError: no"}
        else:
            result["models"]["broken"] = dict(model)
        results[rank] = ranks.gather(result)
    assert results[1] is None
    assert [r["rank"] for r in results[0]] == [0, 1]
    aggregate = bench._aggregate(results[0])
    assert aggregate["m"]["model_only_tiles_per_s"] == 300.0
    assert aggregate["m"]["end_to_end_tiles_per_s"] == 150.0
    assert aggregate["m"]["ratio"] == 0.5 and aggregate["m"]["ranks"] == 2
    assert aggregate["m"]["busy_fraction_min"] == 0.5
    # A model one rank could not measure is summed over the others, naming the failed rank.
    assert aggregate["broken"]["ranks"] == 1 and aggregate["broken"]["failed_ranks"] == [1]
    assert aggregate["broken"]["model_only_tiles_per_s"] == 100.0
    assert not (tmp_path / "shared").exists()  # rank 0 cleans the shared folder up


def test_a_model_no_rank_measured_is_an_error_in_the_aggregate():
    bench = _load_benchmark()
    results = [{"rank": r, "models": {"m": {"skipped": "time budget"}}} for r in (0, 1)]
    assert bench._aggregate(results) == {
        "m": {"error": "no rank measured it", "failed_ranks": [0, 1]}
    }


def test_more_ranks_than_gpus_need_share_gpus(monkeypatch):
    bench = _load_benchmark()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ranks = bench.Ranks(None)
    with pytest.raises(SystemExit, match="--share-gpus"):
        bench._device("cuda", ranks)
    assert bench._device("cuda", ranks, share_gpus=True) == torch.device("cuda:0")


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


def test_medians_leave_out_missing_values():
    bench = _load_benchmark()
    assert bench._median([None, 1.0, 3.0]) == statistics.median([1.0, 3.0])
    assert bench._median([None]) is None
