"""Tile accounting: a slide finishes only when each tile is kept-with-features or filtered, once.

The reproduction from the issue (a bag whose tile count depended on the batch size) and the
ledger's refusals: a tile reported twice, out of range, or never; a source or model that returns
the wrong number of rows. Each is an error naming the slide, never a short bag.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import histobag
from histobag.assembly import FeatureRows, TileLedger
from histobag.bags import generate_feature_bags
from histobag.dataset import Dataset
from histobag.engine import CollectSink, Job, run
from histobag.errors import ArgumentError, TileAccountingError
from histobag.geometry import TileGeometry
from histobag.io.tfrecord import TFRecordReader
from histobag.slide import WSI
from histobag.slide.samples import sample_slide
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered


@pytest.fixture(scope="module")
def extractor():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


@pytest.fixture(scope="module")
def issue_slide(tmp_path_factory):
    """The issue's slide: 64 px tiles of 32 µm, some of them dropped by the pixel filters."""
    path = sample_slide(tmp_path_factory.mktemp("issue") / "s0.svs", size=(1024, 768), seed=0)
    return WSI(path, tile_px=64, tile_um=32)


@pytest.mark.parametrize("batch_size", [1, 8, 16, 32, 41, 64, 97])
@pytest.mark.parametrize("num_workers", [0, 1])
def test_the_issue_reproduction_keeps_every_tissue_tile(
    extractor, issue_slide, batch_size, num_workers
):
    _, keep = issue_slide.read_tiles(range(len(issue_slide)), return_mask=True)
    assert 0 < keep.sum() < len(issue_slide)  # the filters drop some tiles: the case that broke
    features = extractor(issue_slide, batch_size=batch_size, num_workers=num_workers)
    has_features = ~np.ma.getmaskarray(features).any(-1)
    assert has_features.sum() == keep.sum()
    rows, cols = issue_slide.grid_index[keep].T
    assert has_features[rows, cols].all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"batch_size": -4}, "batch_size must be an integer >= 1, got -4"),
        ({"num_workers": -3}, "num_workers"),
        ({"num_workers": "many"}, "num_workers"),
    ],
)
def test_engine_arguments_are_checked_before_any_slide_is_read(
    extractor, issue_slide, kwargs, message
):
    with pytest.raises(ArgumentError, match=message):
        extractor(issue_slide, **kwargs)


def test_the_ledger_accounts_for_each_tile_once():
    ledger = TileLedger("s", 5)
    ledger.filtered_out([1, 3])
    ledger.delivered(np.array([0, 4]))
    assert not ledger.complete and ledger.missing().tolist() == [2]
    with pytest.raises(TileAccountingError, match="s: 1 of 5 tiles were never accounted for"):
        ledger.check_complete()
    with pytest.raises(TileAccountingError, match=r"tiles \[3\] were delivered more than once"):
        ledger.delivered([2, 3])
    with pytest.raises(TileAccountingError, match=r"tiles \[2\] were filtered out more than once"):
        ledger.filtered_out([2, 2])
    with pytest.raises(TileAccountingError, match=r"\[5\] delivered are outside"):
        ledger.delivered([5])
    ledger.delivered([2])
    ledger.check_complete()
    assert ledger.kept.tolist() == [True, False, True, False, True]


def test_spilled_rows_come_back_in_tile_order(tmp_path):
    spill = tmp_path / "rows"
    spill.touch()
    rows = FeatureRows(6, spill, 3)
    data = np.arange(18, dtype=np.float32).reshape(6, 3)
    rows.put(np.array([4, 5]), data[[4, 5]])
    rows.put(np.array([0, 2, 3]), data[[0, 2, 3]])
    keep = np.array([True, False, True, True, True, True])
    np.testing.assert_array_equal(rows.take(keep), data[keep])
    with pytest.raises(TileAccountingError, match="width 2 after rows of width 3"):
        rows.put(np.array([1]), np.zeros((1, 2), np.float32))
    rows.close()
    assert not spill.exists()


class ShortSource:
    """A broken tile source: returns one tile fewer than asked for."""

    def __len__(self) -> int:
        return 10

    def read_tiles(self, indices, *, return_mask=False):
        n = max(0, len(indices) - 1)
        return np.zeros((n, 8, 8, 3), np.uint8), np.ones(n, bool)


@dataclass(frozen=True)
class OpenShort:
    def __call__(self):
        return ShortSource(), np.zeros((10, 2), np.int64), TileGeometry(8, 4.0, 8)


@dataclass(frozen=True)
class OpenFewerCoordinates:
    def __call__(self):
        source, _, geometry = OpenShort()()
        return source, np.zeros((7, 2), np.int64), geometry


@pytest.mark.parametrize(
    ("opener", "message"),
    [
        (OpenShort(), "asked the tile source for 4 tiles, got 3"),
        (OpenFewerCoordinates(), "has 10 tiles but 7 coordinates"),
    ],
)
def test_a_source_that_miscounts_fails_its_slide_not_the_run(extractor, opener, message):
    sink = CollectSink()
    run(extractor, [Job("bad", opener), Job("good", OpenGood())], sink, batch_size=4, num_workers=0)
    assert message in sink.failures["bad"]
    assert "no bag was written" in sink.failures["bad"]
    assert "bad" not in sink.results
    assert len(sink.results["good"].features) == 10


class GoodSource(ShortSource):
    """Ten dark tiles, all kept."""

    def read_tiles(self, indices, *, return_mask=False):
        n = len(indices)
        return np.zeros((n, 8, 8, 3), np.uint8), np.ones(n, bool)


@dataclass(frozen=True)
class OpenGood:
    def __call__(self):
        return GoodSource(), np.zeros((10, 2), np.int64), TileGeometry(8, 4.0, 8)


class RowDroppingModel:
    """Wraps an extractor so that its forward pass loses a row of every batch."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.device = inner.device
        self.num_features = inner.num_features

    def forward_batch(self, batch):
        return self.inner.forward_batch(batch)[1:]


def test_a_model_that_returns_too_few_rows_fails_the_slide(extractor):
    sink = CollectSink()
    run(RowDroppingModel(extractor), [Job("s", OpenGood())], sink, batch_size=4, num_workers=0)
    assert "4 tiles but features of shape (3, 12)" in sink.failures["s"]
    assert not sink.results


def test_a_truncated_tfrecord_fails_its_slide_in_a_bag_run(extractor, tmp_path):
    """The issue's case: a TFRecord cut at a record boundary beside its index was reported
    "done" with 10 of 43 tiles. Now the slide fails naming the file; the others are whole."""
    slides = make_slides(tmp_path / "slides", n=2)
    dataset = Dataset(slides, None, TILE_PX, TILE_UM, tfrecords=tmp_path / "tfr")
    dataset.extract_tiles(progress=False)
    cut = tmp_path / "tfr" / "slide-1.tfrecords"
    offsets = TFRecordReader(cut).offsets
    assert len(offsets) > 10
    with open(cut, "r+b") as handle:
        handle.truncate(int(offsets[10, 0]))  # exactly at a record boundary
    report = generate_feature_bags(
        extractor, dataset, tmp_path / "bags", source="tfrecords", progress=False
    )
    assert set(report.failed) == {"slide-1"}
    assert "slide-1.tfrecords" in report.failed["slide-1"]
    assert "truncated" in report.failed["slide-1"]
    assert report.done["slide-0"] == len(TFRecordReader(tmp_path / "tfr" / "slide-0.tfrecords"))
    assert not (tmp_path / "bags" / "slide-1.pt").exists()
