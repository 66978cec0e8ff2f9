"""The LRU cache shared by the mosaic's tile sources and the tiled-TIFF reader."""

import shutil

import numpy as np
import pytest

from histobag.analysis import tiles
from histobag.analysis.tiles import SlideTileSource, TFRecordTileSource
from histobag.io.tfrecord import TFRecordReader
from histobag.lru import LRUCache
from histobag.slide import WSI
from tests.core.bag_helpers import TILE_PX, TILE_UM, make_slides


def test_lru_by_count_drops_the_least_recently_used_and_reports_it():
    dropped = []
    cache = LRUCache(2, on_evict=dropped.append)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("c", 3)
    assert list(cache) == ["a", "c"]
    assert dropped == [2]
    assert "b" not in cache
    assert cache.get("b", "missing") == "missing"
    assert (len(cache), cache.weight) == (2, 2)


def test_lru_by_weight_keeps_the_total_within_capacity():
    cache = LRUCache(10, weigh=len)
    cache.put("a", "xxxx")
    cache.put("b", "xxxx")
    cache.put("c", "xxxx")  # 12 > 10: "a" goes
    assert list(cache) == ["b", "c"]
    assert cache.weight == 8
    cache.put("big", "x" * 11)  # heavier than the capacity on its own: nothing is kept
    assert (len(cache), cache.weight) == (0, 0)


def test_lru_get_or_make_makes_once_and_replacing_or_clearing_evicts():
    made, dropped = [], []
    cache = LRUCache(3, on_evict=dropped.append)

    def make(key):
        made.append(key)
        return f"value-{key}"

    assert cache.get_or_make("k", lambda: make("k")) == "value-k"
    assert cache.get_or_make("k", lambda: make("k")) == "value-k"
    assert made == ["k"]
    cache.put("k", "new")
    assert dropped == ["value-k"]
    cache.put("k", "new")  # the same value again is not dropped
    cache.put("j", "other")
    cache.clear()
    assert dropped == ["value-k", "new", "other"]
    assert (len(cache), cache.weight) == (0, 0)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tilesources")
    slide = make_slides(folder / "slides", n=1) / "slide-0.svs"
    wsi = WSI(slide, TILE_PX, TILE_UM)
    record = wsi.extract_tiles(folder / "records", img_format="png", progress=False)
    wsi.filter_tiles()  # as in the TFRecord: without the tiles the pixel filters drop
    return slide, wsi, record


def test_tile_sources_close_the_files_they_drop(record, tmp_path, monkeypatch):
    slide, wsi, path = record
    n = tiles.OPEN_FILES + 1
    copies = {}
    for i in range(n):
        copies[f"s{i}"] = tmp_path / f"s{i}.tfrecords"
        shutil.copy(path, copies[f"s{i}"])
    closed = []
    close = TFRecordReader.close

    def recording_close(self):
        closed.append(self.path.stem)
        close(self)

    monkeypatch.setattr(TFRecordReader, "close", recording_close)
    source = TFRecordTileSource(copies)
    x, y = (int(v) for v in wsi.coords[0])
    expected = wsi.read_tile_at(x, y)
    for name in copies:
        np.testing.assert_array_equal(source.read(name, x, y), expected)
    assert closed == ["s0"]  # the least recently used file, and only it

    closed_slides = []
    monkeypatch.setattr(WSI, "close", lambda self: closed_slides.append(self.path))
    slides = SlideTileSource({f"s{i}": slide for i in range(n)}, TILE_PX, TILE_UM)
    for name in slides.slides:
        np.testing.assert_array_equal(slides.read(name, x, y), expected)
    assert len(closed_slides) == 1
