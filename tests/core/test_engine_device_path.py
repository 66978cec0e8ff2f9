"""The engine's path to and from the model's device, checked on the CPU: tissue detected once
per slide, the next batch queued before the last one's features are taken, non-finite
features refused, reading workers that start from a forkserver, and a clear error when they
run out of shared memory."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import histobag
import histobag.engine
from histobag.device_results import FeaturesInFlight, non_finite_rows
from histobag.engine import CollectSink, Job, run
from histobag.errors import ArgumentError, SharedMemoryError
from histobag.geometry import TileGeometry
from histobag.slide.tissue_hsv import HSVTissueDetector
from histobag.tile_readers import OpenWSI, Subsample
from histobag.worker_start import check_importable, shared_memory_error, worker_context
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered


@pytest.fixture(scope="module")
def extractor():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    return make_slides(tmp_path_factory.mktemp("device-path"), n=3)


def _jobs(slides: Path, wrap=lambda opener: opener) -> list[Job]:
    return [
        Job(f"slide-{i}", wrap(OpenWSI(str(slides / f"slide-{i}.svs"), TILE_PX, TILE_UM, {})))
        for i in range(3)
    ]


@pytest.fixture(scope="module")
def reference(extractor, slides) -> dict[str, np.ndarray]:
    sink = CollectSink()
    run(extractor, _jobs(slides), sink, batch_size=16, num_workers=0)
    assert not sink.failures
    return {key: result for key, result in sink.results.items()}


def _assert_same_bags(results, reference) -> None:
    """The same tiles, and the same features up to batch composition (float summation order
    differs with the batch a tile lands in)."""
    assert set(results) == set(reference)
    for key, expected in reference.items():
        np.testing.assert_array_equal(results[key].top_left, expected.top_left)
        np.testing.assert_allclose(results[key].features, expected.features, rtol=1e-5, atol=1e-5)


@pytest.fixture
def count_tissue_detections(tmp_path, monkeypatch):
    """Count tissue detections by the default detector (hsv) in this process and in forked
    workers (a file, since workers are processes)."""
    log = tmp_path / "detections.log"
    detect = HSVTissueDetector.__call__

    def counted(self, *args, **kwargs):
        with open(log, "a") as out:
            out.write(f"{os.getpid()}\n")
        return detect(self, *args, **kwargs)

    monkeypatch.setattr(HSVTissueDetector, "__call__", counted)
    return lambda: len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize("num_workers", [0, 1, 3])
@pytest.mark.parametrize("subsample", [False, True])
def test_tissue_is_detected_once_per_slide_however_many_workers_read_it(
    extractor, slides, reference, count_tissue_detections, num_workers, subsample
):
    wrap = (lambda opener: Subsample(opener, 10_000)) if subsample else (lambda opener: opener)
    sink = CollectSink()
    run(extractor, _jobs(slides, wrap), sink, batch_size=8, num_workers=num_workers)
    assert count_tissue_detections() == 3  # once per slide, in the main process
    assert not sink.failures
    _assert_same_bags(sink.results, reference)


class _RecordingModel:
    """Wraps an extractor's ``forward_batch``, logging each call next to the progress calls."""

    def __init__(self, extractor, log: list, nan_rows: dict[int, list[int]] | None = None):
        self.extractor = extractor
        self.log = log
        self.nan_rows = nan_rows or {}
        self.calls = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        features = type(self.extractor).forward_batch(self.extractor, batch)
        self.log.append(("forward", self.calls))
        if self.calls in self.nan_rows:
            features = features.clone()  # an inference tensor: not writable in place
            features[self.nan_rows[self.calls], 0] = float("nan")
        self.calls += 1
        return features


def test_the_main_thread_never_waits_for_the_models_output(
    extractor, slides, reference, monkeypatch
):
    # On CUDA, waiting for a batch's features in the main thread would leave the GPU with
    # nothing queued; the writer thread waits instead.
    waited_in: list[str] = []
    numpy = FeaturesInFlight.numpy

    def recorded(self):
        waited_in.append(threading.current_thread().name)
        return numpy(self)

    monkeypatch.setattr(FeaturesInFlight, "numpy", recorded)
    monkeypatch.setattr(torch.Tensor, "cpu", _main_thread_must_not("Tensor.cpu"))
    sink = CollectSink()
    run(extractor, _jobs(slides)[:2], sink, batch_size=8, num_workers=0)
    assert len(waited_in) >= 4 and set(waited_in) == {"histobag-writer"}
    _assert_same_bags(sink.results, {k: reference[k] for k in ("slide-0", "slide-1")})


def _main_thread_must_not(what: str):
    original = getattr(torch.Tensor, what.split(".")[1])

    def guarded(self, *args, **kwargs):
        assert threading.current_thread() is not threading.main_thread(), f"{what} in main"
        return original(self, *args, **kwargs)

    return guarded


def test_non_finite_features_fail_their_slide_naming_the_tiles(
    extractor, slides, reference, monkeypatch
):
    log: list = []
    # The second model call (slide-0's second batch of 8) returns NaN for two tiles.
    model = _RecordingModel(extractor, log, nan_rows={1: [2, 5]})
    monkeypatch.setattr(extractor, "forward_batch", model)
    sink = CollectSink()
    run(extractor, _jobs(slides), sink, batch_size=8, num_workers=0)
    assert set(sink.failures) == {"slide-0"}
    reason = sink.failures["slide-0"]
    assert "NaN or infinite" in reason and "2 tiles" in reason and "precision" in reason
    others = {key: reference[key] for key in ("slide-1", "slide-2")}  # the run goes on
    _assert_same_bags(sink.results, others)


def test_non_finite_rows_finds_nan_and_infinity():
    features = np.zeros((5, 3), np.float32)
    features[1, 2], features[3, 0], features[4, 1] = np.nan, np.inf, -np.inf
    assert non_finite_rows(features).tolist() == [1, 3, 4]
    assert non_finite_rows(np.zeros((0, 3), np.float32)).tolist() == []


def test_features_on_the_cpu_come_back_as_they_are():
    features = torch.randn(4, 3)
    assert np.array_equal(FeaturesInFlight(features).numpy(), features.numpy())


def test_workers_from_a_forkserver_give_the_same_bags(
    extractor, slides, reference, monkeypatch, count_tissue_detections
):
    # The context used for CUDA models, on the CPU: a forkserver with histobag preloaded.
    monkeypatch.setattr(
        histobag.engine,
        "worker_context",
        lambda device: worker_context(torch.device("cuda")),
    )
    for _ in range(2):  # the second run forks from the server the first one started
        sink = CollectSink()
        run(extractor, _jobs(slides), sink, batch_size=8, num_workers=2)
        assert not sink.failures
        _assert_same_bags(sink.results, reference)
    assert count_tissue_detections() == 6  # planned in this process: once per slide and run


def test_worker_context_forks_for_cpu_models_and_uses_a_forkserver_for_accelerators():
    if "fork" in multiprocessing.get_all_start_methods():
        assert worker_context(torch.device("cpu")).get_start_method() == "fork"
    if "forkserver" in multiprocessing.get_all_start_methods():
        for device in ("cuda:1", "mps"):
            assert worker_context(torch.device(device)).get_start_method() == "forkserver"


@dataclass(frozen=True)
class InteractiveOpener:
    path: str


def test_a_tile_source_from_an_interactive_session_is_refused_before_the_run(monkeypatch):
    opener = InteractiveOpener("x")
    monkeypatch.setattr(InteractiveOpener, "__module__", "__main__")
    interactive = type(sys)("__main__")  # like the Python prompt or a notebook: no __file__
    monkeypatch.setitem(sys.modules, "__main__", interactive)
    forkserver = multiprocessing.get_context("forkserver")
    with pytest.raises(ArgumentError, match="num_workers=0"):
        check_importable([opener], forkserver)
    check_importable([opener], multiprocessing.get_context("fork"))  # forked: no import
    interactive.__file__ = "/work/script.py"  # a script: workers import it again
    check_importable([opener], forkserver)


class _BusErrorSource:
    """A tile source whose worker dies as the kernel kills one that runs out of /dev/shm."""

    def __len__(self) -> int:
        return 4

    def read_tiles(self, indices, *, return_mask=False):
        os.kill(os.getpid(), signal.SIGBUS)


@dataclass(frozen=True)
class _OpenBusError:
    def __call__(self):
        geometry = TileGeometry(TILE_PX, TILE_UM, TILE_PX, 0.5)
        return _BusErrorSource(), np.zeros((4, 2), np.int64), geometry


def test_a_worker_killed_for_want_of_shared_memory_gives_an_error_naming_the_fix(extractor):
    sink = CollectSink()
    with pytest.raises(SharedMemoryError, match="--shm-size"):
        run(extractor, [Job("doomed", _OpenBusError())], sink, batch_size=4, num_workers=1)
    assert "doomed" in sink.failures  # reported, nothing written


def test_only_shared_memory_failures_are_translated():
    bus = RuntimeError("DataLoader worker (pid 12) is killed by signal: Bus error. ")
    assert isinstance(shared_memory_error(bus, workers=2), SharedMemoryError)
    assert shared_memory_error(bus, workers=0) is None  # no workers: not theirs
    assert shared_memory_error(RuntimeError("size mismatch"), workers=2) is None
    assert shared_memory_error(KeyboardInterrupt(), workers=2) is None


class _SeenDevice:
    def __init__(self, runs_on_host: bool):
        self.runs_on_host = runs_on_host
        self.seen: list[str] = []

    def transform(self, batch: torch.Tensor) -> torch.Tensor:
        self.seen.append(batch.device.type)
        return batch


@pytest.mark.parametrize("runs_on_host", [False, True])
def test_a_normalizer_that_computes_on_the_host_gets_the_tiles_before_the_copy(runs_on_host):
    tiles = torch.zeros((2, 8, 8, 3), dtype=torch.uint8)
    normalizer = _SeenDevice(runs_on_host)
    batch = histobag.engine._to_device_batch(tiles, torch.device("meta"), normalizer)
    assert batch.device.type == "meta" and batch.shape == (2, 3, 8, 8)
    assert normalizer.seen == (["cpu"] if runs_on_host else ["meta"])


REPEATED_RUNS = """
import sys
import histobag
from histobag.engine import CollectSink, Job, run
from histobag.tile_readers import OpenWSI
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM
from tests.core.toy_models import registered
with registered(PIXELNET):
    fe = histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)
for _ in range(4):
    sink = CollectSink()
    jobs = [Job(f"s{i}", OpenWSI(p, TILE_PX, TILE_UM)) for i, p in enumerate(sys.argv[1:])]
    run(fe, jobs, sink, batch_size=8, num_workers=2)
    assert len(sink.results) == len(jobs) and not sink.failures
print("ok")
"""


def test_run_after_run_with_forked_workers_in_one_process(slides):
    # Workers are forked before the planning thread starts: a fork while it opened a slide
    # could hand a worker a lock held forever (seen as a hang on a second run).
    paths = [str(slides / f"slide-{i}.svs") for i in range(3)]
    out = subprocess.run(
        [sys.executable, "-c", REPEATED_RUNS, *paths],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
