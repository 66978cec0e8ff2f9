"""Shards, SLURM arrays and torchrun ranks: which process starts where, on which device."""

import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from histobag.cluster import (
    Launch,
    Shard,
    cpu_threads_per_rank,
    parse_shard,
    rank_device,
    slurm_array_shard,
    torchrun_launch,
)
from histobag.errors import ArgumentError


def test_a_shard_starts_with_its_own_slides_then_the_next_shards():
    assert Shard(0, 3).order(8) == [0, 3, 6, 1, 4, 7, 2, 5]
    assert Shard(1, 3).order(8) == [1, 4, 7, 2, 5, 0, 3, 6]
    assert Shard(2, 3).order(8) == [2, 5, 0, 3, 6, 1, 4, 7]
    assert Shard(0, 1).order(4) == [0, 1, 2, 3]


@given(st.integers(0, 200), st.integers(1, 20), st.data())
def test_every_shard_visits_every_slide_once_and_the_shards_split_them(n, count, data):
    index = data.draw(st.integers(0, count - 1))
    order = Shard(index, count).order(n)
    assert sorted(order) == list(range(n))
    own_parts = [Shard(s, count).order(n)[: len(range(s, n, count))] for s in range(count)]
    assert sorted(p for part in own_parts for p in part) == list(range(n))  # a split, no overlap
    assert order[: len(own_parts[index])] == own_parts[index]


def test_parse_shard_is_one_based():
    assert parse_shard("1/3") == Shard(0, 3)
    assert parse_shard("3/3") == Shard(2, 3)
    assert parse_shard("3/3").label() == "3/3"
    for bad in ("0/3", "4/3", "3", "a/b", "1/0", "-1/3"):
        with pytest.raises(ArgumentError, match="shard"):
            parse_shard(bad)


def test_slurm_array_variables_give_the_shard():
    assert slurm_array_shard({}) is None
    env = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0"}
    assert slurm_array_shard(env) == Shard(0, 3)
    # --array=1-3: task ids 1..3 are shards 0..2
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"}
    assert slurm_array_shard(env) == Shard(2, 3)
    # --array=0-8:4 (ids 0, 4, 8)
    env = {
        "SLURM_ARRAY_TASK_ID": "4",
        "SLURM_ARRAY_TASK_COUNT": "3",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_STEP": "4",
    }
    assert slurm_array_shard(env) == Shard(1, 3)
    with pytest.raises(ArgumentError, match="--shard"):
        slurm_array_shard({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "3"})


def test_torchrun_variables_give_rank_and_shard():
    assert torchrun_launch({}) is None
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    launch = torchrun_launch(env)
    assert launch == Launch(5, 8, 1, 4)
    assert launch.shard == Shard(5, 8)
    with pytest.raises(ArgumentError, match="inconsistent"):
        torchrun_launch({"RANK": "8", "WORLD_SIZE": "8"})


def test_cpu_ranks_split_the_cores():
    assert cpu_threads_per_rank(2, cores=16) == 8
    assert cpu_threads_per_rank(3, cores=16) == 5
    assert cpu_threads_per_rank(4, cores=2) == 1


def test_a_rank_without_cuda_runs_where_asked(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    launch = Launch(1, 2, 1, 2)
    assert rank_device(launch, None) == "cpu"
    assert rank_device(launch, "cpu") == "cpu"


def test_each_rank_gets_its_local_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert rank_device(Launch(6, 8, 2, 4), None) == "cuda:2"
    assert rank_device(Launch(6, 8, 2, 4), "cuda") == "cuda:2"
    assert rank_device(Launch(6, 8, 2, 4), "cuda:0") == "cuda:0"  # explicit wins
    with pytest.raises(ArgumentError, match="nproc-per-node=4"):
        rank_device(Launch(4, 8, 4, 8), None)


def test_process_start_time_is_measured_to_within_a_few_clock_ticks():
    # A rerun launched right after a run exits must not seem to have started before that exit:
    # whole-second boot times in /proc/stat would put it up to a second early.
    code = (
        "import time; from histobag.cluster import process_start_time as s; print(s(), time.time())"
    )
    for _ in range(3):
        before = time.time()
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        started, printed = map(float, out.stdout.split())
        assert before - 0.03 <= started <= printed
