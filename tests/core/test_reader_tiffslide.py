"""The tiffslide reader: OpenSlide's pixels from local pyramidal TIFF/SVS, and slides read from
a URL with range requests (a local HTTP server), giving the local file's tiles and bags."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

import histobag
from histobag.bags.read import read_bag
from histobag.errors import MissingDependencyError, SlideOpenError
from histobag.plugins import slide_reader_specs
from histobag.slide import WSI
from histobag.slide.readers import open_reader
from histobag.slide.readers.openslide_reader import rgba_to_rgb
from histobag.slide.readers.tiffslide_reader import CACHE_ENV, TiffSlideReader
from histobag.slide.samples import sample_slide
from tests.core.bag_helpers import PIXELNET
from tests.core.http_server import serve_folder
from tests.core.toy_models import registered

MPP = 0.5


@pytest.fixture
def tiffslide_registered():
    """Core registers the ``tiffslide`` reader (builtin.py)."""
    assert "tiffslide" in slide_reader_specs()
    return slide_reader_specs()["tiffslide"]


@pytest.fixture(autouse=True)
def block_cache(tmp_path, monkeypatch) -> Path:
    """Each test's own block cache folder (never the user's)."""
    folder = tmp_path / "block-cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def write_pyramid_tiff(path: Path, size: tuple[int, int], compression: str | None) -> Path:
    """A generic tiled pyramidal TIFF (levels 1, 4, 16; 256 px tiles) with resolution tags
    (centimetres) for 0.5 µm/px, of sample_slide's histology."""
    svs = sample_slide(path.with_suffix(".src.svs"), size=size, levels=3, compression="deflate")
    with tifffile.TiffFile(svs) as tif:
        levels = [page.asarray() for page in tif.pages]
    svs.unlink()
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(levels):
            pixels_per_cm = 1e4 / (MPP * 4**i)
            tif.write(
                level,
                photometric="rgb",
                tile=(256, 256),
                compression=compression,
                compressionargs={"level": 85} if compression == "jpeg" else None,
                resolution=(pixels_per_cm, pixels_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                metadata=None,
            )
    return path


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiffslide")
    write_pyramid_tiff(folder / "jpeg.tiff", (1536, 1024), "jpeg")
    write_pyramid_tiff(folder / "raw.tiff", (1000, 700), None)  # edges inside tiles
    sample_slide(folder / "aperio.svs", size=(1536, 1024), levels=3, compression="jpeg")
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """A folder holding one larger JPEG slide (~850 kB) to serve over HTTP."""
    folder = tmp_path_factory.mktemp("served")
    write_pyramid_tiff(folder / "remote.tiff", (3072, 2048), "jpeg")
    return folder


def _openslide_rgb(slide: openslide.OpenSlide, location, level, size) -> np.ndarray:
    return rgba_to_rgb(slide.read_region(location, level, size))


def _regions(width: int, height: int, downsample: float):
    """(level-0 location, size) pairs: the whole level with a margin, an interior region
    across tile boundaries, the bottom-right and top-left edges, and outside the slide."""
    ds = int(downsample)
    yield (0, 0), (width + 11, height + 7)
    if downsample != ds:  # OpenSlide interpolates between level pixels: whole pixels only
        return
    yield (-3 * ds, -5 * ds), (width + 11, height + 7)
    yield (ds * (width // 3), ds * (height // 4)), (min(300, width), min(200, height))
    yield (ds * (width - 40), ds * (height - 25)), (90, 70)
    yield (-ds * 17, -ds * 9), (60, 50)
    yield (ds * (width + 5), 0), (20, 20)


@pytest.mark.parametrize(
    "name", ["jpeg.tiff", "raw.tiff", "aperio.svs", "vendor:small.svs", "vendor:boxes.tiff"]
)
def test_pixels_equal_openslide_at_every_level_and_across_edges(name, fixtures, vendor_dir):
    path = vendor_dir / name.split(":")[1] if name.startswith("vendor:") else fixtures / name
    reference = openslide.OpenSlide(str(path))
    reader = TiffSlideReader(str(path))
    assert reader.level_dimensions == tuple(reference.level_dimensions)
    assert reader.level_downsamples == pytest.approx(reference.level_downsamples, abs=0)
    assert reader.mpp == pytest.approx(float(reference.properties["openslide.mpp-x"]))
    assert float(reader.properties["openslide.mpp-x"]) == reader.mpp
    assert reader.vendor == reference.properties["openslide.vendor"]
    compared = 0
    for level, ((width, height), ds) in enumerate(
        zip(reference.level_dimensions, reference.level_downsamples)
    ):
        for location, size in _regions(width, height, ds):
            ours = reader.read_region(location, level, size)
            assert ours.dtype == np.uint8 and ours.shape == (size[1], size[0], 3)
            expected = _openslide_rgb(reference, location, level, size)
            assert np.array_equal(ours, expected), (name, level, location, size)
            compared += 1
    assert compared == sum(6 if float(ds).is_integer() else 1 for ds in reader.level_downsamples)
    reader.close()


def test_aperio_levels_are_not_listed_as_associated_images(fixtures):
    # sample_slide's levels are all tiled: tifffile names pages 2 and 3 thumbnail and label.
    reader = TiffSlideReader(str(fixtures / "aperio.svs"))
    assert len(reader.level_dimensions) == 3
    assert reader.associated_images() == {}


def test_local_files_stay_with_openslide_and_urls_come_here(fixtures, tiffslide_registered):
    assert open_reader(str(fixtures / "jpeg.tiff"))[0] == "openslide"
    name, reader = open_reader(str(fixtures / "jpeg.tiff"), "tiffslide")
    assert name == "tiffslide" and isinstance(reader, TiffSlideReader)
    with serve_folder(fixtures) as server:
        name, reader = open_reader(server.url("jpeg.tiff"))
        assert name == "tiffslide"
        assert reader.dimensions == (1536, 1024) and reader.mpp == pytest.approx(MPP)
        reader.close()


def _tissue_tile(reader: TiffSlideReader) -> tuple[int, int]:
    """Level-0 (x, y) of the darkest 256-px TIFF tile (tissue), from the 16x smaller level."""
    small = reader.read_region((0, 0), 2, reader.level_dimensions[2]).mean(axis=2)
    rows, cols = small.shape[0] // 16, small.shape[1] // 16
    blocks = small[: rows * 16, : cols * 16].reshape(rows, 16, cols, 16).mean(axis=(1, 3))
    row, col = np.unravel_index(np.argmin(blocks), blocks.shape)
    return int(col) * 256, int(row) * 256


def test_a_url_reads_a_tissue_area_in_ranges_and_equal_to_the_file(served, block_cache):
    path = served / "remote.tiff"
    size = path.stat().st_size
    local = TiffSlideReader(str(path))
    x, y = _tissue_tile(local)
    location, region = (x + 16, y + 16), (224, 224)
    expected = local.read_region(location, 0, region)
    assert expected.mean() < 200  # tissue, not glass (background 243)
    with serve_folder(served) as server:
        remote = TiffSlideReader(server.url("remote.tiff"), block_size=16 * 2**10)
        pixels = remote.read_region(location, 0, region)
        fetched = server.bytes_served
        assert np.array_equal(pixels, expected)
        assert np.array_equal(
            pixels, _openslide_rgb(openslide.OpenSlide(str(path)), location, 0, region)
        )
        assert 0 < fetched < 0.3 * size, f"{fetched} of {size} bytes"
        assert server.served.ranged_gets >= 2
        assert not [r for r in server.served.requests if r[0] == "GET" and r[3] == 200]
        remote.close()

        # A second open (a worker process, a rerun) reads the same blocks from disk.
        server.served.reset()
        again = TiffSlideReader(server.url("remote.tiff"), block_size=16 * 2**10)
        assert np.array_equal(again.read_region(location, 0, region), expected)
        assert server.bytes_served == 0
        again.close()
    assert any(block_cache.rglob("*")), "blocks were cached on disk"


def test_without_the_disk_cache_blocks_are_fetched_again(served, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "off")
    with serve_folder(served) as server:
        first = TiffSlideReader(server.url("remote.tiff"), block_size=16 * 2**10)
        first.read_region((0, 0), 2, (32, 32))
        once = server.bytes_served
        first.close()
        second = TiffSlideReader(server.url("remote.tiff"), block_size=16 * 2**10)
        second.read_region((0, 0), 2, (32, 32))
        assert server.bytes_served == 2 * once > 0
        second.close()


def test_a_missing_url_or_non_tiff_is_a_slide_open_error(fixtures, tmp_path):
    (tmp_path / "notes.tiff").write_bytes(b"not a tiff at all" * 100)
    with serve_folder(tmp_path) as server:
        with pytest.raises(SlideOpenError, match=r"missing\.tiff"):
            TiffSlideReader(server.url("missing.tiff"))
        with pytest.raises(SlideOpenError, match=r"notes\.tiff"):
            TiffSlideReader(server.url("notes.tiff"))
    with pytest.raises(SlideOpenError, match="does not exist"):
        TiffSlideReader(str(tmp_path / "nowhere.svs"))


def test_missing_tiffslide_names_the_remote_extra(fixtures, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiffslide", None)  # import fails
    with pytest.raises(MissingDependencyError, match=r"histobag\[remote\]"):
        TiffSlideReader(str(fixtures / "jpeg.tiff"))


def test_a_scheme_without_its_fsspec_backend_names_the_package(fixtures, monkeypatch):
    import fsspec

    def no_backend(protocol, **kwargs):
        raise ImportError(f"Install s3fs to access {protocol}")

    monkeypatch.setattr(fsspec, "filesystem", no_backend)
    with pytest.raises(MissingDependencyError, match="s3fs"):
        TiffSlideReader("s3://bucket/slide.svs")


@contextlib.contextmanager
def _served_wsis(folder: Path, name: str, **kwargs):
    with serve_folder(folder) as server:
        remote = WSI(server.url(name), **kwargs)
        local = WSI(folder / name, **kwargs)
        yield server, remote, local


def test_wsi_from_a_url_has_the_local_files_tiles(fixtures, tiffslide_registered):
    with _served_wsis(fixtures, "jpeg.tiff", tile_px=32, tile_um=64) as (_, remote, local):
        assert (remote.reader_name, local.reader_name) == ("tiffslide", "openslide")
        assert remote.level == local.level == 1  # read from a lower level
        assert remote.mpp == local.mpp == MPP
        assert len(remote) > 10 and np.array_equal(remote.coords, local.coords)
        indices = np.arange(len(remote))
        assert np.array_equal(remote.read_tiles(indices), local.read_tiles(indices))


def test_bags_from_a_url_equal_the_local_files(fixtures, tiffslide_registered):
    with registered(PIXELNET):
        extractor = histobag.build_feature_extractor(
            "pixelnet", device="cpu", mixed_precision=False
        )
        with _served_wsis(fixtures, "jpeg.tiff", tile_px=16, tile_um=32) as (
            server,
            remote,
            local,
        ):
            # num_workers=1: a worker process reopens the URL (the reader is not pickled).
            from_url = extractor(remote, batch_size=16, num_workers=1)
            assert server.bytes_served > 0
        from_file = extractor(local, batch_size=16, num_workers=1)
    kept = ~from_file.mask[..., 0]
    assert kept.sum() > 20
    assert np.array_equal(from_url.mask, from_file.mask)
    assert np.array_equal(from_url.data[kept], from_file.data[kept])


def test_a_dataset_of_urls_makes_the_local_files_bags(fixtures, tiffslide_registered, tmp_path):
    """``histobag.Dataset([url])``: the bag written from the URL equals the local file's, and
    the run report says which reader read it."""
    with registered(PIXELNET):
        extractor = histobag.build_feature_extractor(
            "pixelnet", device="cpu", mixed_precision=False
        )
        with serve_folder(fixtures) as server:
            url = server.url("jpeg.tiff")
            remote = histobag.Dataset([url], None, 16, 32)
            assert list(remote.slides()) == ["jpeg"]
            report = remote.generate_feature_bags(
                extractor, tmp_path / "url", num_workers=1, progress=False
            )
        local = histobag.Dataset([fixtures / "jpeg.tiff"], None, 16, 32)
        local.generate_feature_bags(extractor, tmp_path / "file", num_workers=1, progress=False)
    assert report.ok and report.done == {"jpeg": report.done["jpeg"]}
    url_features, url_coords, _ = read_bag(tmp_path / "url", "jpeg")
    file_features, file_coords, _ = read_bag(tmp_path / "file", "jpeg")
    assert len(url_features) > 20
    assert np.array_equal(url_coords, file_coords)
    assert np.array_equal(url_features, file_features)
    details = json.loads((tmp_path / "url" / "run_report.json").read_text())["slides"]
    assert details["jpeg"]["reader"].startswith("tiffslide ")
