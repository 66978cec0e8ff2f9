"""Property-based tests: the engine loses no tile and invents none, whatever the settings.

Each example draws slides with random keep-masks (none, all, runs at the start / middle / end,
isolated tiles, random), a random batch size and 0, 1 or 2 reading workers, and checks the
result against an independent reference: the set of tile indices in each result equals the set
the filters keep, and the features equal the model applied to exactly those tiles. The same
property is checked for TFRecords and for the bag files ``generate_feature_bags`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import histobag
from histobag.bags import generate_feature_bags
from histobag.bags.config import read_config
from histobag.dataset import Dataset
from histobag.engine import CollectSink, Job, run
from histobag.extraction import features_from_tfrecord
from histobag.geometry import TileGeometry, top_left_to_centres
from histobag.io.bag_writers import get_writer
from histobag.io.images import encode_image
from histobag.io.tfrecord import TFRecordWriter
from histobag.slide import WSI
from tests.core.bag_helpers import PIXELNET
from tests.core.toy_models import registered

PX = 8  # tile side: small, so hundreds of examples stay fast
SETTINGS = settings(
    derandomize=True,  # the same examples on every run: a CI failure reproduces locally
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)


@pytest.fixture(scope="module")
def extractor():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


def tile_pixels(seed: int, indices: np.ndarray) -> np.ndarray:
    """Deterministic, distinct pixels for each (slide seed, tile index)."""
    out = np.empty((len(indices), PX, PX, 3), dtype=np.uint8)
    for row, i in enumerate(indices):
        out[row] = np.random.default_rng([seed, int(i)]).integers(0, 256, (PX, PX, 3))
    return out


class SyntheticTiles:
    """A tile source with a given keep-mask; optionally fails when asked for one tile."""

    def __init__(self, seed: int, keep: np.ndarray, fail_at: int | None) -> None:
        self.seed, self.keep, self.fail_at = seed, keep, fail_at

    def __len__(self) -> int:
        return len(self.keep)

    def read_tiles(self, indices, *, return_mask=False):
        idx = np.asarray(indices, dtype=np.int64)
        if self.fail_at is not None and self.fail_at in idx:
            raise histobag.HistobagError(f"cannot read tile {self.fail_at}")
        tiles = tile_pixels(self.seed, idx)
        return (tiles, self.keep[idx].copy()) if return_mask else tiles


@dataclass(frozen=True)
class OpenSynthetic:
    """Picklable opener of a :class:`SyntheticTiles` (worker processes open their own)."""

    seed: int
    keep: tuple[bool, ...]
    fail_at: int | None = None

    def __call__(self):
        keep = np.array(self.keep, dtype=bool)
        top_left = np.stack([np.arange(len(keep)) * PX, np.full(len(keep), self.seed)], axis=1)
        return SyntheticTiles(self.seed, keep, self.fail_at), top_left, TileGeometry(PX, 4.0, PX)


@st.composite
def keep_masks(draw, max_tiles: int = 130) -> np.ndarray:
    """Keep-masks shaped like the ones that broke bags: none, all, runs, isolated tiles."""
    n = draw(st.integers(0, max_tiles))
    kind = draw(st.sampled_from(["all", "none", "start", "end", "middle", "isolated", "random"]))
    keep = np.ones(n, dtype=bool)
    if kind == "none":
        keep[:] = False
    elif kind in ("start", "end", "middle") and n:
        a = draw(st.integers(0, n))
        b = draw(st.integers(a, n))
        span = {"start": slice(0, b), "end": slice(a, n), "middle": slice(a, b)}[kind]
        keep[span] = False
    elif kind == "isolated" and n:
        keep[:] = False
        keep[draw(st.lists(st.integers(0, n - 1), max_size=6))] = True
    elif kind == "random":
        keep = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    return keep


def reference_features(extractor, seed: int, keep: np.ndarray) -> np.ndarray:
    """The model applied to exactly the kept tiles, one tile at a time."""
    idx = np.flatnonzero(keep)
    if not len(idx):
        return np.zeros((0, extractor.num_features), dtype=np.float32)
    tiles = torch.from_numpy(tile_pixels(seed, idx)).permute(0, 3, 1, 2)
    return np.concatenate([extractor.forward_batch(t[None]).numpy() for t in tiles])


def check_slide(extractor, result, seed: int, keep: np.ndarray) -> None:
    np.testing.assert_array_equal(result.kept, keep)
    assert result.features.shape == (keep.sum(), extractor.num_features)
    expected_top_left = np.stack([np.flatnonzero(keep) * PX, np.full(keep.sum(), seed)], axis=1)
    np.testing.assert_array_equal(result.top_left.reshape(-1, 2), expected_top_left)
    np.testing.assert_allclose(
        result.features, reference_features(extractor, seed, keep), rtol=1e-5, atol=1e-5
    )


def run_slides(extractor, slides, batch_size, workers, spill_dir=None) -> CollectSink:
    jobs = [
        Job(f"s{i}", OpenSynthetic(seed, tuple(keep.tolist()), fail_at))
        for i, (seed, keep, fail_at) in enumerate(slides)
    ]
    sink = CollectSink()
    run(extractor, jobs, sink, batch_size=batch_size, num_workers=workers, spill_dir=spill_dir)
    return sink


@st.composite
def slide_sets(draw, max_slides: int = 4):
    """1..max_slides slides of different sizes, some of which fail part-way."""
    n = draw(st.integers(1, max_slides))
    slides = []
    for i in range(n):
        keep = draw(keep_masks())
        fail_at = None
        if len(keep) and draw(st.integers(0, 5)) == 0:
            fail_at = draw(st.integers(0, len(keep) - 1))
        slides.append((100 + i, keep, fail_at))
    return slides


def check_run(extractor, sink: CollectSink, slides) -> None:
    failing = {f"s{i}" for i, (_, _, fail_at) in enumerate(slides) if fail_at is not None}
    assert set(sink.failures) == failing
    assert set(sink.results) == {f"s{i}" for i in range(len(slides))} - failing
    for i, (seed, keep, _) in enumerate(slides):
        if f"s{i}" in sink.results:
            check_slide(extractor, sink.results[f"s{i}"], seed, keep)


@pytest.mark.slow
@settings(SETTINGS, max_examples=120)
@given(slides=slide_sets(), batch_size=st.integers(1, 97))
def test_inline_reading_keeps_exactly_the_filtered_tiles(extractor, slides, batch_size):
    check_run(extractor, run_slides(extractor, slides, batch_size, 0), slides)


@settings(SETTINGS, max_examples=16)
@given(slides=slide_sets(), batch_size=st.integers(1, 97), workers=st.sampled_from([1, 2]))
def test_worker_reading_keeps_exactly_the_filtered_tiles(
    extractor, slides, batch_size, workers, tmp_path_factory
):
    spill_dir = tmp_path_factory.mktemp("spill")
    check_run(extractor, run_slides(extractor, slides, batch_size, workers, spill_dir), slides)
    assert list(spill_dir.iterdir()) == []  # no spill file outlives its slide


@settings(SETTINGS, max_examples=40)
@given(keep=keep_masks(max_tiles=60), batch_size=st.integers(1, 97))
def test_spilled_features_equal_in_memory_ones(extractor, keep, batch_size, tmp_path_factory):
    slides = [(7, keep, None)]
    spill_dir = tmp_path_factory.mktemp("spill")
    in_memory = run_slides(extractor, slides, batch_size, 0).results["s0"]
    spilled = run_slides(extractor, slides, batch_size, 0, spill_dir).results["s0"]
    np.testing.assert_array_equal(spilled.features, in_memory.features)
    np.testing.assert_array_equal(spilled.kept, keep)


# ------------------------------------------------------------------------------------------
# TFRecords: every record comes back, in order, with its own location
# ------------------------------------------------------------------------------------------


@settings(SETTINGS, max_examples=25)
@given(
    n=st.integers(0, 70),
    batch_size=st.integers(1, 97),
    workers=st.sampled_from([0, 0, 0, 1]),
)
def test_tfrecord_features_cover_every_record(extractor, n, batch_size, workers, tmp_path_factory):
    path = tmp_path_factory.mktemp("tfr") / "t.tfrecords"
    seed = 11
    tiles = tile_pixels(seed, np.arange(n))
    locations = np.stack([np.arange(n) * 3 + 1, np.arange(n) * 5 + 2], axis=1)
    with TFRecordWriter(path) as writer:
        for tile, (x, y) in zip(tiles, locations):
            writer.write_tile("t", encode_image(tile, "png"), int(x), int(y))
    features, coords = features_from_tfrecord(
        extractor, path, batch_size=batch_size, num_workers=workers
    )
    assert features.shape == (n, extractor.num_features)
    np.testing.assert_array_equal(coords.numpy().reshape(-1, 2), locations.reshape(-1, 2))
    np.testing.assert_allclose(
        features.numpy(), reference_features(extractor, seed, np.ones(n, bool)), atol=1e-5
    )


# ------------------------------------------------------------------------------------------
# generate_feature_bags: the bag files hold every kept tile of real slides
# ------------------------------------------------------------------------------------------

BAG_PX, BAG_UM = 64, 32


@pytest.fixture(scope="module")
def filtered_slides(tmp_path_factory) -> Path:
    """Sample slides on which the grayspace/whitespace filters drop some grid tiles."""
    folder = tmp_path_factory.mktemp("filtered")
    for seed, size in ((0, (1024, 768)), (3, (640, 512))):
        histobag.slide.samples.sample_slide(folder / f"f{seed}.svs", size=size, seed=seed)
    return folder


def kept_by_filters(path: Path) -> tuple[np.ndarray, np.ndarray, WSI]:
    """(top-left corners, tiles, the WSI) the WSI keeps, read independently of the engine."""
    wsi = WSI(path, BAG_PX, BAG_UM)
    tiles, keep = wsi.read_tiles(range(len(wsi)), return_mask=True)
    assert 0 < keep.sum() < len(wsi), "the fixture must exercise the filters"
    return wsi.coords[keep], tiles[keep], wsi


@settings(SETTINGS, max_examples=8)
@given(batch_size=st.integers(1, 97), writer=st.sampled_from(["pt", "h5"]))
def test_bag_files_hold_every_kept_tile(
    extractor, filtered_slides, batch_size, writer, tmp_path_factory
):
    outdir = tmp_path_factory.mktemp("bags")
    dataset = Dataset(filtered_slides, None, BAG_PX, BAG_UM)
    report = generate_feature_bags(
        extractor, dataset, outdir, writer=writer, batch_size=batch_size, progress=False
    )
    assert not report.failed
    bag_writer = get_writer(read_config(outdir)["writer"], outdir)
    for path in sorted(filtered_slides.glob("*.svs")):
        top_left, tiles, wsi = kept_by_filters(path)
        features, coords = bag_writer.read(path.stem)
        expected = (
            top_left_to_centres(top_left, wsi.full_extract_px)
            if bag_writer.coordinates == "centre"
            else top_left
        )
        np.testing.assert_array_equal(coords, expected)
        assert report.done[path.stem] == len(top_left)
        reference = np.concatenate(
            [
                extractor.forward_batch(torch.from_numpy(t[None]).permute(0, 3, 1, 2)).numpy()
                for t in tiles
            ]
        )
        np.testing.assert_allclose(np.asarray(features), reference, rtol=1e-5, atol=1e-5)
