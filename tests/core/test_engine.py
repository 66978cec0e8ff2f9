"""Where the engine reads tiles: worker processes, or the main process on small CPUs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import histobag
from histobag import engine
from histobag.engine import CollectSink, Job, auto_workers, run
from histobag.tile_readers import OpenWSI
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@dataclass(frozen=True)
class OpenAndRecordPid:
    """Opens a slide like ``OpenWSI`` and appends the opening process's id to a file."""

    inner: OpenWSI
    record: str

    def __call__(self):
        with open(self.record, "a") as out:
            out.write(f"{os.getpid()}\n")
        return self.inner()


def _cores(monkeypatch, n: int) -> None:
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)


@pytest.mark.parametrize(
    ("cores", "cpu_workers", "cuda_workers"),
    [(1, 0, 1), (2, 0, 1), (4, 0, 3), (8, 2, 7), (16, 4, 8), (64, 4, 8)],
)
def test_auto_workers_reads_inline_on_small_cpus(monkeypatch, cores, cpu_workers, cuda_workers):
    _cores(monkeypatch, cores)
    assert auto_workers(CPU) == cpu_workers
    assert auto_workers(CUDA) == cuda_workers


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return make_slides(tmp_path_factory.mktemp("engineslides"), n=1) / "slide-0.svs"


@pytest.fixture(scope="module")
def extractor():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


def _extract(extractor, slide: Path, record: Path, num_workers) -> np.ndarray:
    sink = CollectSink()
    job = Job("s", OpenAndRecordPid(OpenWSI(str(slide), TILE_PX, TILE_UM), str(record)))
    run(extractor, [job], sink, batch_size=8, num_workers=num_workers)
    return sink.single("s").features


def test_auto_on_a_small_cpu_reads_in_the_main_process_with_the_same_features(
    monkeypatch, slide, extractor, tmp_path
):
    _cores(monkeypatch, 2)
    inline = _extract(extractor, slide, tmp_path / "auto.txt", "auto")
    assert (tmp_path / "auto.txt").read_text().split() == [str(os.getpid())]

    in_worker = _extract(extractor, slide, tmp_path / "worker.txt", 1)
    worker_pids = (tmp_path / "worker.txt").read_text().split()
    assert len(worker_pids) == 1 and worker_pids[0] != str(os.getpid())
    assert len(inline) > 20
    np.testing.assert_array_equal(inline, in_worker)
