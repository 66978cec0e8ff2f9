"""Slide readers as plugins: which reader opens a slide, WSI on any reader, the reader
recorded with the bags, ``histobag slides``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import histobag
from histobag.bags.config import fingerprint, read_config
from histobag.cli import main
from histobag.dataset import find_slides
from histobag.errors import SlideOpenError
from histobag.slide import WSI
from histobag.slide.errors import TileSettingsError
from histobag.slide.readers import SlideReader, candidates, open_reader, reader_names
from histobag.slide.samples import sample_slide
from histobag.slide.tissue import tissue_record
from histobag.specs import SlideReaderSpec
from tests.core.bag_helpers import PIXELNET
from tests.core.conftest import VENDOR_DIR
from tests.helpers import histology_tiles

OPENS: list[str] = []


class ArrayReader(SlideReader):
    """A test format: ``.testarr`` files holding one uint8 RGB array (np.save), at 0.5 µm/px,
    with a 2x level made by averaging."""

    def __init__(self, source: str) -> None:
        if not source.endswith(".testarr"):
            raise SlideOpenError(f"not a .testarr file: {source}")
        with open(source, "rb") as handle:
            self.image = np.load(handle)
        OPENS.append(source)
        h, w = self.image.shape[:2]
        self.half = self.image[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, 3)
        self.half = self.half.mean(axis=(1, 3)).round().astype(np.uint8)
        self.source = source
        self.dimensions = (w, h)
        self.level_dimensions = ((w, h), (w // 2, h // 2))
        self.level_downsamples = (1.0, 2.0)
        self.mpp, self.magnification, self.vendor = 0.5, 20.0, "test"
        self.properties = {"test.format": "array"}
        self.version = "1.2.3"

    def read_region(self, location, level, size):
        image = self.image if level == 0 else self.half
        scale = self.level_downsamples[level]
        x0, y0 = int(location[0] // scale), int(location[1] // scale)
        out = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
        h, w = image.shape[:2]
        xs, ys = max(x0, 0), max(y0, 0)
        xe, ye = min(x0 + size[0], w), min(y0 + size[1], h)
        if xe > xs and ye > ys:
            out[ys - y0 : ye - y0, xs - x0 : xe - x0] = image[ys:ye, xs:xe]
        return out


class FailingReader(SlideReader):
    """Claims everything first and opens nothing."""

    def __init__(self, source: str) -> None:
        raise RuntimeError("this reader opens nothing")

    def read_region(self, location, level, size):  # pragma: no cover - never opened
        raise AssertionError


ARRAY = SlideReaderSpec(
    "testarr", "tests.core.test_slide_readers:ArrayReader", suffixes=(".testarr",), priority=5
)
FAILING = SlideReaderSpec(
    "failing", "tests.core.test_slide_readers:FailingReader", suffixes=(".testarr",), priority=9
)
REMOTE = SlideReaderSpec(
    "remote", "tests.core.test_slide_readers:FailingReader", schemes=("https",), priority=1
)


class ReaderPack:
    def __init__(self, *specs):
        self.specs = list(specs)

    @histobag.hookimpl
    def histobag_slide_readers(self):
        return self.specs

    @histobag.hookimpl
    def histobag_extractors(self):
        return [PIXELNET]


@pytest.fixture
def readers():
    pack = ReaderPack(ARRAY, REMOTE)
    histobag.register_plugin(pack)
    yield pack
    histobag.unregister_plugin(pack)


def _array_slide(path: Path, size=(640, 448)) -> Path:
    tiles = histology_tiles(n=1, size=max(size))[0]
    with open(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(tiles[: size[1], : size[0]]))
    return path


def test_openslide_is_the_default_reader(tmp_path):
    path = sample_slide(tmp_path / "s.svs", size=(256, 256), levels=1)
    name, reader = open_reader(str(path))
    assert name == "openslide" and reader.version and reader.mpp == pytest.approx(0.5)
    wsi = WSI(path, 32, 16)
    assert (wsi.reader_name, wsi.reader_version) == ("openslide", reader.version)
    assert "openslide" in reader_names()


def test_a_registered_reader_opens_its_suffix_and_tiles_are_its_pixels(readers, tmp_path):
    path = _array_slide(tmp_path / "a.testarr")
    wsi = WSI(path, 64, 32, tissue=None)  # 64 level-0 px per tile, read from level 0
    assert (wsi.reader_name, wsi.reader_version, wsi.vendor) == ("testarr", "1.2.3", "test")
    image = np.load(path)
    for i in (0, 3, len(wsi) - 1):
        x, y = wsi.coords[i]
        np.testing.assert_array_equal(wsi.read_tile(i), image[y : y + 64, x : x + 64])
    down = WSI(path, 32, 32, tissue=None)  # 64 px at 0.5 µm -> 32 px: level 1 (2x)
    assert down.level == 1 and down.read_tile(0).shape == (32, 32, 3)
    OPENS.clear()
    clone = pickle.loads(pickle.dumps(wsi))  # a worker reopens with the same reader
    np.testing.assert_array_equal(clone.read_tile(2), wsi.read_tile(2))
    assert [str(path)] == OPENS and clone.reader_name == "testarr"


def test_readers_are_tried_by_priority_and_failures_are_named(readers, tmp_path):
    path = _array_slide(tmp_path / "b.testarr")
    failing = histobag.register_plugin(FailingPack())
    try:
        _priority_checks(path, tmp_path)
    finally:
        histobag.unregister_plugin(failing)


class FailingPack:
    @histobag.hookimpl
    def histobag_slide_readers(self):
        return [FAILING]


def _priority_checks(path: Path, tmp_path: Path) -> None:
    names = [spec.name for spec in candidates(str(path))]
    assert names.index("failing") < names.index("testarr") < names.index("openslide")
    assert open_reader(str(path))[0] == "testarr"  # the failing one is passed over
    with pytest.raises(SlideOpenError, match="this reader opens nothing"):
        open_reader(str(path), "failing")
    with pytest.raises(TileSettingsError, match=r"Unknown slide reader .nope.*openslide"):
        open_reader(str(path), "nope")
    garbage = tmp_path / "c.testarr"
    garbage.write_bytes(b"not an array")
    with pytest.raises(SlideOpenError) as failed:
        WSI(garbage, 32, 16)
    message = str(failed.value)
    assert all(name in message for name in ("failing:", "testarr:", "openslide:"))


def test_urls_go_only_to_readers_of_their_scheme(readers):
    names = [spec.name for spec in candidates("https://example.org/slide.svs")]
    assert names[0] == "remote" and "openslide" not in names  # OpenSlide reads local files
    assert all("https" in spec.schemes for spec in candidates("https://example.org/slide.svs"))
    with pytest.raises(SlideOpenError, match="RuntimeError: this reader opens nothing"):
        open_reader("https://example.org/slide.svs", "remote")
    with pytest.raises(SlideOpenError, match="No installed slide reader opens ftp://"):
        open_reader("ftp://host/slide.svs")


def test_datasets_find_reader_suffixes_and_record_the_reader(readers, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(2):
        _array_slide(slides / f"arr-{i}.testarr")
    sample_slide(slides / "svs-0.svs", size=(512, 384), levels=1)
    (slides / "folder.testarr").mkdir()  # a slide folder is a slide, not searched further
    _array_slide(slides / "folder.testarr" / "inside.testarr")
    found = find_slides(slides)
    assert sorted(found) == ["arr-0", "arr-1", "folder", "svs-0"]
    dataset = histobag.Dataset([found["arr-0"], found["arr-1"], found["svs-0"]], None, 32, 16)
    extractor = histobag.build_feature_extractor("pixelnet", device="cpu")
    report = dataset.generate_feature_bags(
        extractor, tmp_path / "bags", num_workers=0, progress=False
    )
    assert report.ok and len(report.done) == 3
    config = read_config(tmp_path / "bags")
    assert config["reader"] == "auto" and fingerprint(config)["reader"] == "auto"
    details = json.loads((tmp_path / "bags" / "run_report.json").read_text())["slides"]
    readers_used = {s: details[s]["reader"] for s in ("arr-0", "arr-1", "svs-0")}
    assert readers_used["arr-0"] == readers_used["arr-1"] == "testarr 1.2.3"
    assert readers_used["svs-0"].startswith("openslide ")
    named = histobag.Dataset([found["arr-0"]], None, 32, 16, reader="testarr")
    assert named.wsi("arr-0").reader_name == "testarr"
    with pytest.raises(Exception, match="reader must be one of"):
        histobag.Dataset([found["arr-0"]], None, 32, 16, reader="nope")


def test_a_config_written_before_readers_counts_as_auto():
    old = {"extractor": {"extractor": "x", "kwargs": {}}, "writer": "pt"}
    assert fingerprint(old)["reader"] == "auto"


def test_slides_command_lists_each_vendor_file_with_its_reader_or_why_not(capsys, tmp_path):
    assert main(["slides", str(VENDOR_DIR), "--json"]) == 1  # two files do not open
    listed = {Path(i["path"]).name: i for i in json.loads(capsys.readouterr().out)}
    assert set(listed) == {
        "boxes.tiff",
        "boxes_0.dcm",
        "boxes_1.dcm",
        "small.svs",
        "unopenable.tiff",
        "unreadable.svs",
    } | ({"boxes.png"} if any(".png" in s.suffixes for s in _specs()) else set())
    assert listed["small.svs"]["reader"] == "openslide" and listed["small.svs"]["error"] is None
    assert listed["small.svs"]["dimensions"] == [16, 16]
    assert "52479" in listed["unopenable.tiff"]["error"]  # its unknown compression, named
    assert "pixels cannot be read" in listed["unreadable.svs"]["error"]
    assert main(["slides", str(VENDOR_DIR)]) == 1
    table = capsys.readouterr().out
    assert "no plausible mpp" in table  # boxes.tiff records 72 dpi
    assert main(["slides", "--readers"]) == 0
    assert "openslide" in capsys.readouterr().out


def _specs():
    return histobag.plugins.slide_reader_specs().values()


def test_slides_command_writes_thumbnails(tmp_path, capsys):
    slides = tmp_path / "slides"
    sample_slide(slides / "s.svs", size=(1024, 768), levels=2)
    assert main(["slides", str(slides), "--thumbnails", str(tmp_path / "thumbs")]) == 0
    written = sorted(p.name for p in (tmp_path / "thumbs").iterdir())
    assert written == ["s.thumbnail.png", "s.tissue.png"]


def test_tissue_detectors_are_chosen_by_name_and_recorded(tmp_path):
    from histobag.slide.tissue import resolve_tissue_detector

    path = sample_slide(tmp_path / "slides" / "s.svs", size=(1024, 768), levels=2)
    hsv = WSI(path, 32, 16, tissue="hsv")
    assert hsv.tissue_record["name"] == "hsv" and hsv.tissue_record["kwargs"]
    assert resolve_tissue_detector("hsv")[1] == hsv.tissue_record  # every parameter recorded
    otsu = WSI(path, 32, 16, tissue={"name": "otsu", "kwargs": {"sigma": 1}})
    assert otsu.tissue_record == {"name": "otsu", "kwargs": {"sigma": 1.0}}
    with pytest.raises(TileSettingsError, match="hsv"):
        histobag.Dataset(tmp_path / "slides", None, 32, 16, tissue="nope")
    dataset = histobag.Dataset(tmp_path / "slides", None, 32, 16, tissue="hsv")
    pack = ReaderPack()
    histobag.register_plugin(pack)
    try:
        extractor = histobag.build_feature_extractor("pixelnet", device="cpu")
        report = dataset.generate_feature_bags(
            extractor, tmp_path / "bags", num_workers=0, progress=False
        )
    finally:
        histobag.unregister_plugin(pack)
    hsv.filter_tiles()  # the grid, less the tiles the pixel filters drop
    assert report.done == {"s": len(hsv)}  # the bag holds exactly the hsv grid's tiles
    config = read_config(tmp_path / "bags")
    assert config["tissue"] == tissue_record("hsv") == fingerprint(config)["tissue"]
