"""Tiled TIFF levels read straight from their tiles: the same pixels as OpenSlide, or OpenSlide."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from histobag.errors import SlideReadError
from histobag.slide import WSI
from histobag.slide.samples import sample_slide
from histobag.slide.tiff_tiles import TiledTiffLevels
from histobag.slide.wsi import rgba_to_rgb


def openslide_rgb(slide: openslide.OpenSlide, location, level, size) -> np.ndarray:
    """OpenSlide's region composited onto white."""
    region = slide.read_region(location, level, size)
    white = Image.new("RGBA", region.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, region).convert("RGB"))


def record_openslide_reads(monkeypatch) -> list:
    """The arguments of every OpenSlide ``read_region`` call from now on."""
    calls = []
    original = openslide.OpenSlide.read_region
    monkeypatch.setattr(
        openslide.OpenSlide, "read_region", lambda self, *a: calls.append(a) or original(self, *a)
    )
    return calls


@pytest.fixture(scope="module")
def jpeg_slide(tmp_path_factory):
    return sample_slide(
        tmp_path_factory.mktemp("jpeg") / "jpeg.svs", size=(1536, 1024), compression="jpeg"
    )


def slides(request):
    return {
        "deflate": lambda: request.getfixturevalue("slide_path"),
        "jpeg": lambda: request.getfixturevalue("jpeg_slide"),
        "aperio-rgb-jpeg": lambda: request.getfixturevalue("vendor_dir") / "small.svs",
        "generic-tiff": lambda: request.getfixturevalue("vendor_dir") / "boxes.tiff",
    }


@pytest.mark.parametrize("kind", ["deflate", "jpeg", "aperio-rgb-jpeg", "generic-tiff"])
def test_every_level_reads_the_pixels_openslide_reads(kind, request):
    path = slides(request)[kind]()
    slide = openslide.OpenSlide(str(path))
    reader = TiledTiffLevels.open(
        path, slide.properties[openslide.PROPERTY_NAME_VENDOR], slide.level_dimensions
    )
    assert reader is not None
    assert sorted(reader.levels) == list(range(slide.level_count))
    rng = np.random.default_rng(0)
    compared = 0
    for level, (width, height) in enumerate(slide.level_dimensions):
        downsample = slide.level_downsamples[level]
        regions = [(0, 0, width, height), (-5, -7, 20, 30), (width - 9, height - 3, 40, 11)]
        for _ in range(6):  # random regions, some reaching past the edges
            w, h = (int(v) for v in rng.integers(1, [min(width, 300), min(height, 300)]))
            x, y = int(rng.integers(-20, width)), int(rng.integers(-20, height))
            regions.append((x, y, w, h))
        for x, y, w, h in regions:
            location = round(x * downsample), round(y * downsample)
            if (location[0] / downsample, location[1] / downsample) != (x, y):
                continue  # between level pixels: OpenSlide interpolates, WSI asks OpenSlide
            ours = reader.read(level, x, y, w, h)
            theirs = openslide_rgb(slide, location, level, (w, h))
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{kind} level {level}")
            compared += 1
    assert compared >= 9 * min(2, slide.level_count)
    reader.close()


def test_wsi_reads_tiles_without_openslide_and_equal_to_it(slide_path, monkeypatch):
    wsi = WSI(slide_path, 224, 112, tissue=None)
    expected = [
        openslide_rgb(openslide.OpenSlide(str(slide_path)), tuple(map(int, c)), 0, (224, 224))
        for c in wsi.coords[:40]
    ]
    calls = record_openslide_reads(monkeypatch)
    tiles = wsi.read_tiles(np.arange(40))
    np.testing.assert_array_equal(tiles, np.stack(expected))
    assert calls == []  # decoded from the TIFF tiles


def test_locations_between_level_pixels_are_left_to_openslide(slide_path, monkeypatch):
    wsi = WSI(slide_path, 256, "5x", tissue=None)  # read from level 1 (downsample 4)
    calls = record_openslide_reads(monkeypatch)
    region = rgba_to_rgb(wsi._read_region((1030, 2050), 1, (64, 64)))  # 257.5, 512.5
    assert calls == [((1030, 2050), 1, (64, 64))]  # OpenSlide interpolates between pixels
    slide = openslide.OpenSlide(str(slide_path))
    np.testing.assert_array_equal(region, openslide_rgb(slide, (1030, 2050), 1, (64, 64)))


def test_other_vendors_are_read_by_openslide(vendor_dir):
    assert TiledTiffLevels.open(vendor_dir / "boxes_0.dcm", "dicom", [(16, 16)]) is None
    wsi = WSI(vendor_dir / "boxes_0.dcm", 8, 4, tissue=None)  # 16 x 16 px at 0.499 mpp
    assert wsi._slide._tiff is None
    slide = openslide.OpenSlide(str(vendor_dir / "boxes_0.dcm"))
    np.testing.assert_array_equal(wsi.read_tile(0), openslide_rgb(slide, (0, 0), 0, (8, 8)))


def test_a_tile_that_does_not_decode_is_reported_as_openslide_reports_it(tmp_path):
    path = sample_slide(tmp_path / "corrupt.svs", size=(1024, 1024), levels=1)
    page = tifffile.TiffFile(path).pages[0]
    offset, count = page.dataoffsets[5], page.databytecounts[5]  # tile row 1, column 1
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * count)
    wsi = WSI(path, 256, "20x", tissue=None)
    assert wsi._slide._tiff is not None
    wsi.read_tile(0)  # undamaged tiles still read
    with pytest.raises(SlideReadError, match=r"corrupt\.svs.*\(256, 256\)"):
        wsi.read_tiles([5])


def test_pickled_wsi_reopens_its_tile_reader(slide_path):
    import pickle

    wsi = WSI(slide_path, 224, 112, tissue=None)
    copy = pickle.loads(pickle.dumps(wsi))
    assert copy._reader is None  # reopened, with the same reader, on first use
    np.testing.assert_array_equal(copy.read_tiles([0, 1]), wsi.read_tiles([0, 1]))
    assert copy._reader._tiff is not None
    copy.close()
    assert copy._reader is None


def test_tiles_shared_by_neighbouring_regions_are_decoded_once(slide_path):
    from histobag.slide import tiff_tiles

    slide = openslide.OpenSlide(str(slide_path))
    reader = TiledTiffLevels(slide_path, slide.level_dimensions)
    decoded = []  # tile indices decoded (every cache miss)
    page = reader.levels[0].page

    class CountingPage:
        def decode(self, data, index, **kwargs):
            decoded.append(index)
            return page.decode(data, index, **kwargs)

    reader.levels[0].page = CountingPage()
    # Two 224-px grid rows, 16 tiles wide: both fall in TIFF tile row 0, 14 tiles wide.
    first = reader.read(0, 0, 0, 3584, 224)
    second = reader.read(0, 0, 224, 3584, 224)
    assert sorted(decoded) == list(range(14)) + list(range(16, 30))  # rows 0 and 1, once each
    np.testing.assert_array_equal(second, openslide_rgb(slide, (0, 224), 0, (3584, 224)))
    np.testing.assert_array_equal(first, openslide_rgb(slide, (0, 0), 0, (3584, 224)))
    # The cache is bounded: with room for 4 tiles, reading the strip again decodes it again.
    assert reader._cache.capacity == tiff_tiles.CACHE_BYTES
    reader._cache.clear()
    reader._cache.capacity = 4 * 256 * 256 * 3
    decoded.clear()
    reader.read(0, 0, 0, 3584, 224)
    reader.read(0, 0, 0, 3584, 224)
    assert len(decoded) == 14 + 14
    assert 0 < reader._cache.weight <= 4 * 256 * 256 * 3
    reader.close()
