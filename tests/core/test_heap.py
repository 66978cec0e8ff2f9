"""HeapTrimmer: free heap pages go back to the OS once resident memory creeps past a slack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import histobag
import histobag.engine
from histobag import heap
from histobag.slide import WSI
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered

MB = 2**20


def test_trims_only_past_the_slack_over_the_first_reading(monkeypatch):
    readings = iter([500 * MB, 540 * MB, 563 * MB, 565 * MB, 520 * MB, 610 * MB])
    monkeypatch.setattr(heap, "resident_bytes", lambda: next(readings))
    calls = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: calls.append)
    trimmer = heap.HeapTrimmer(slack_mb=64)  # reads once to check /proc is there
    for _ in range(5):
        trimmer()
    assert trimmer.baseline == 540 * MB
    assert calls == [0]  # only 610 MB > 540 + 64
    assert trimmer.trims == 1


def _trimmer(monkeypatch, readings_mb, **kwargs):
    readings = iter([r * MB for r in readings_mb])
    monkeypatch.setattr(heap, "resident_bytes", lambda: next(readings))
    calls = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: calls.append)
    return heap.HeapTrimmer(slack_mb=64, **kwargs), calls


def test_a_trim_the_batches_undo_raises_the_level_instead_of_trimming_every_batch(monkeypatch):
    # First reading: the constructor's check; then one per batch. The batches keep 100 MB more
    # than after the first one: a trim frees it, the next batch faults it in again.
    trimmer, calls = _trimmer(monkeypatch, [500, 540, 640, 640, 641, 639, 640, 700, 703])
    for _ in range(8):
        trimmer()
    assert trimmer.trims == 1  # at 640; back at 640 after it, so 640 became the level
    assert trimmer.baseline == 640 * MB
    assert calls == [0]  # 700 and 703 are within the slack over 640


def test_memory_that_a_trim_brings_down_is_still_trimmed_as_it_creeps(monkeypatch):
    # Creeping heap pinned by small blocks (the case the trimmer is for): each trim brings
    # resident memory back, so it stays at the first batch's level and trims again later.
    trimmer, calls = _trimmer(monkeypatch, [500, 540, 610, 560, 580, 606, 545])
    for _ in range(6):
        trimmer()
    assert trimmer.baseline == 540 * MB
    assert trimmer.trims == 2 and calls == [0, 0]


def test_further_growth_after_a_raised_level_is_trimmed(monkeypatch):
    trimmer, calls = _trimmer(monkeypatch, [500, 540, 640, 650, 720])
    for _ in range(4):
        trimmer()
    assert trimmer.baseline == 650 * MB  # raised one batch after the first trim
    assert trimmer.trims == 2 and calls == [0, 0]  # 720 > 650 + 64


def test_without_glibc_or_proc_it_does_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    trimmer = heap.HeapTrimmer()
    trimmer()
    assert trimmer.baseline is None and trimmer.trims == 0


PINNED_HEAP = """
import ctypes, json
from histobag import heap

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
# 64 KB blocks come from the heap (below the mmap threshold); a small block after each one
# pins the heap's top, so freeing the big ones cannot shrink it. Small chunks freed by the
# imports are used up first, so that every pin comes from the heap's top.
drained = [libc.malloc(32) for _ in range(200_000)]
big, pins = [], []
for _ in range(3000):
    block = libc.malloc(64 * 1024)
    ctypes.memset(block, 1, 64 * 1024)
    big.append(block)
    pins.append(libc.malloc(32))
trimmer = heap.HeapTrimmer(slack_mb=64)
in_use = heap.resident_bytes()
trimmer.baseline = in_use - 192 * 2**20  # as if the blocks came after the first batch
for block in big:
    libc.free(block)
freed = heap.resident_bytes()
trimmer()
print(json.dumps([in_use, freed, heap.resident_bytes(), trimmer.trims]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim is Linux's")
def test_hands_back_heap_memory_pinned_by_small_allocations():
    # A fresh interpreter, so the heap's layout is not that left by earlier tests.
    out = subprocess.run(
        [sys.executable, "-c", PINNED_HEAP], capture_output=True, text=True, check=True
    )
    in_use, freed, trimmed, trims = json.loads(out.stdout)
    assert freed > in_use - 32 * MB  # 190 MB freed, but still resident
    assert trims == 1
    assert trimmed < freed - 150 * MB


def test_the_engine_checks_the_heap_after_every_batch(tmp_path, monkeypatch):
    calls = []

    class CountingTrimmer:
        def __call__(self):
            calls.append(1)

    monkeypatch.setattr(histobag.engine, "HeapTrimmer", CountingTrimmer)
    slide = make_slides(tmp_path, n=1) / "slide-0.svs"
    wsi = WSI(slide, TILE_PX, TILE_UM)
    wsi.filter_tiles()  # only the tiles the pixel filters keep reach the model
    with registered(PIXELNET):
        extractor = histobag.build_feature_extractor("pixelnet", device="cpu")
        extractor(wsi, batch_size=8, num_workers=0)
    assert len(calls) == -(-len(wsi) // 8)  # every batch
