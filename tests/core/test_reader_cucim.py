"""The ``cucim`` reader (NVIDIA cuCIM on the CPU): OpenSlide's pixels from generated pyramidal
TIFFs (JPEG, uncompressed, LZW) and Aperio SVS files (JPEG, JPEG 2000), at level 0 and lower
levels, inside and across the slide's edge; bags through ``reader="cucim"`` equal OpenSlide's.

cuCIM ships for Linux x86-64 only: elsewhere this module is skipped (it cannot be installed);
there it must be installed (tests/requirements.txt).

What cuCIM does not read exactly is refused before cuCIM sees the file (it crashes the process
on deflate with a predictor, and decodes a corrupt tile to black) or documented in the reader's
docstring (Aperio JPEG 2000 YCbCr: within 1 level).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

if platform.system() != "Linux" or platform.machine() != "x86_64":
    pytest.skip("cuCIM is published for Linux x86-64 only", allow_module_level=True)

import cucim

import histobag
from histobag.bags.read import read_bag
from histobag.cli import main
from histobag.errors import MissingDependencyError, SlideOpenError
from histobag.plugins import slide_reader_specs
from histobag.slide import WSI
from histobag.slide.readers import candidates, open_reader
from histobag.slide.readers.cucim_reader import (
    DEVICE_ENV,
    CuCIMReader,
    unsupported_reason,
)
from histobag.slide.readers.openslide_reader import OpenSlideReader, rgba_to_rgb
from histobag.slide.samples import sample_slide
from tests.core.bag_helpers import PIXELNET
from tests.core.test_reader_tiffslide import write_pyramid_tiff
from tests.core.toy_models import registered

MPP = 0.5
JP2K_TILE = 256


def write_aperio_jp2k(path: Path, compression: int) -> Path:
    """An Aperio SVS of two levels (1, 4) whose 256-px tiles are JPEG 2000 codestreams:
    compression 33005 (RGB components) or 33003 (YCbCr components, as Aperio scanners write)."""
    svs = sample_slide(path.with_suffix(".src.svs"), size=(768, 512), levels=2)
    with tifffile.TiffFile(svs) as tif:
        levels = [page.asarray() for page in tif.pages]
    svs.unlink()

    def tiles(level: np.ndarray):
        if compression == 33003:  # the components are YCbCr (readers convert them to RGB)
            level = np.asarray(Image.fromarray(level).convert("YCbCr"))
        for y in range(0, level.shape[0], JP2K_TILE):
            for x in range(0, level.shape[1], JP2K_TILE):
                tile = np.zeros((JP2K_TILE, JP2K_TILE, 3), np.uint8)
                part = level[y : y + JP2K_TILE, x : x + JP2K_TILE]
                tile[: part.shape[0], : part.shape[1]] = part
                yield imagecodecs.jpeg2k_encode(tile, level=0, codecformat="J2K")

    width, height = levels[0].shape[1], levels[0].shape[0]
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(levels):
            head = f"{width}x{height} [0,0 {width}x{height}] (256x256) J2K/KDU Q=70"
            info = (
                f"|AppMag = 20|MPP = {MPP}" if i == 0 else f" -> {level.shape[1]}x{level.shape[0]}"
            )
            tif.write(
                tiles(level),
                shape=level.shape,
                dtype="uint8",
                tile=(JP2K_TILE, JP2K_TILE),
                compression=compression,
                photometric="rgb",
                description=f"Aperio Image Library v12.0.15 \r\n{head}{info}",
                metadata=None,
            )
    return path


def write_aperio_with_images(path: Path) -> Path:
    """An Aperio SVS laid out as scanners write it: level 0, a stripped JPEG thumbnail, level
    1, then an LZW label and a JPEG macro image."""
    svs = sample_slide(path.with_suffix(".src.svs"), size=(1024, 768), levels=2)
    with tifffile.TiffFile(svs) as tif:
        levels = [page.asarray() for page in tif.pages]
        descriptions = [page.description for page in tif.pages]
    svs.unlink()
    rng = np.random.default_rng(0)
    head = "Aperio Image Library v12.0.15\r\n"
    with tifffile.TiffWriter(path) as tif:
        tiled = {"tile": (256, 256), "photometric": "rgb", "compression": "jpeg", "metadata": None}
        tif.write(levels[0], description=descriptions[0], **tiled)
        tif.write(levels[1][::2, ::2], photometric="rgb", compression="jpeg", rowsperstrip=16,
                  description=f"{head}1024x768 -> 128x96", metadata=None)  # fmt: skip
        tif.write(levels[1], description=descriptions[1], **tiled)
        images = {"label": ((60, 80, 3), "lzw", 1), "macro": ((50, 120, 3), "jpeg", 9)}
        for name, (shape, compression, subfiletype) in images.items():
            pixels = rng.integers(0, 255, shape).astype(np.uint8)
            tif.write(pixels, photometric="rgb", compression=compression, metadata=None,
                      subfiletype=subfiletype, description=f"{head}{name}")  # fmt: skip
    return path


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cucim")
    write_pyramid_tiff(folder / "jpeg.tiff", (1536, 1024), "jpeg")
    write_pyramid_tiff(folder / "raw.tiff", (1000, 700), None)  # edges inside tiles; ds 16.2
    sample_slide(folder / "aperio.svs", size=(1536, 1024), levels=3, compression="jpeg")
    sample_slide(folder / "deflate.svs", size=(1000, 700), levels=2, compression="deflate")
    write_aperio_with_images(folder / "images.svs")
    write_aperio_jp2k(folder / "jp2k-rgb.svs", 33005)
    write_aperio_jp2k(folder / "jp2k-ycbcr.svs", 33003)
    pixels = np.asarray(tifffile.imread(folder / "raw.tiff"))
    tifffile.imwrite(
        folder / "lzw.tiff",
        pixels,
        tile=(256, 256),
        photometric="rgb",
        compression="lzw",
        predictor=True,
        metadata=None,
    )
    tifffile.imwrite(folder / "stripped.tiff", pixels, photometric="rgb", metadata=None)
    tifffile.imwrite(
        folder / "zstd.tiff",
        pixels,
        tile=(256, 256),
        photometric="rgb",
        compression="zstd",
        metadata=None,
    )
    tifffile.imwrite(
        folder / "planar.tiff", np.moveaxis(pixels, -1, 0), tile=(256, 256), photometric="rgb",
        planarconfig="separate", metadata=None,
    )  # fmt: skip
    return folder


def _regions(width: int, height: int, downsample: float):
    """(level-0 location, size) pairs on whole level pixels: the whole level with a margin, an
    interior region across tile boundaries, the bottom-right and top-left edges, and outside
    the slide."""
    yield (0, 0), (width + 11, height + 7)
    if not float(downsample).is_integer():  # OpenSlide interpolates: see the next test
        return
    ds = int(downsample)
    yield (-3 * ds, -5 * ds), (width + 11, height + 7)
    yield (ds * (width // 3), ds * (height // 4)), (min(300, width), min(200, height))
    yield (ds * (width - 40), ds * (height - 25)), (90, 70)
    yield (-ds * 17, -ds * 9), (60, 50)
    yield (ds * (width + 5), 0), (20, 20)


def _openslide_rgb(slide: openslide.OpenSlide, location, level, size) -> np.ndarray:
    return rgba_to_rgb(slide.read_region(location, level, size))


@pytest.mark.parametrize(
    "name",
    [
        "jpeg.tiff",
        "raw.tiff",
        "lzw.tiff",
        "aperio.svs",
        "images.svs",
        "deflate.svs",
        "jp2k-rgb.svs",
        "vendor:small.svs",
    ],
)
def test_pixels_equal_openslide_at_every_level_and_across_edges(name, fixtures, vendor_dir):
    path = vendor_dir / name.split(":")[1] if name.startswith("vendor:") else fixtures / name
    reference = openslide.OpenSlide(str(path))
    reader = CuCIMReader(str(path))
    assert reader.level_dimensions == tuple(reference.level_dimensions)
    assert reader.level_downsamples == pytest.approx(reference.level_downsamples, abs=0)
    assert reader.dimensions == reference.dimensions
    assert reader.vendor == reference.properties["openslide.vendor"]
    if "openslide.mpp-x" in reference.properties:
        assert reader.mpp == pytest.approx(float(reference.properties["openslide.mpp-x"]))
    else:
        assert reader.mpp is None
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


def test_a_level_with_a_fractional_downsample_reads_its_own_pixels(fixtures):
    """raw.tiff's level 2 is 62 x 43 (downsample 16.204): from every level-0 x, the reader
    returns level column floor(x / downsample), as the other readers do, although cuCIM
    takes level-0 coordinates and divides them in float32 (passing the floor of the product
    back to cuCIM reads the column before)."""
    path = fixtures / "raw.tiff"
    reader = CuCIMReader(str(path))
    ds = reader.level_downsamples[2]
    assert not ds.is_integer()
    with tifffile.TiffFile(path) as tif:
        level = tif.pages[2].asarray()
    height = level.shape[0]
    for x in range(reader.dimensions[0]):
        column = math.floor(x / ds)
        expected = level[:, column : column + 2]
        assert np.array_equal(
            reader.read_region((x, 0), 2, (2, height))[:, : expected.shape[1]], expected
        ), x


def test_aperio_jpeg2000_ycbcr_is_within_one_level(fixtures):
    """Aperio's JPEG 2000 YCbCr (33003): cuCIM and OpenSlide convert YCbCr to RGB with a
    different rounding, so pixels are within 1 level, not equal (documented)."""
    path = fixtures / "jp2k-ycbcr.svs"
    reference = openslide.OpenSlide(str(path))
    reader = CuCIMReader(str(path))
    for level, (width, height) in enumerate(reference.level_dimensions):
        ours = reader.read_region((0, 0), level, (width, height))
        expected = _openslide_rgb(reference, (0, 0), level, (width, height))
        difference = np.abs(ours.astype(int) - expected)
        assert difference.max() == 1, level  # 0 would mean the docstring is out of date


def test_what_cucim_cannot_read_exactly_is_refused_before_it_opens(fixtures, vendor_dir):
    # OpenSlide's boxes.tiff is deflate with a horizontal predictor: cuCIM would crash the
    # process (SIGSEGV), so the check runs in a child process.
    boxes = vendor_dir / "boxes.tiff"
    code = (
        "from histobag.slide.readers.cucim_reader import CuCIMReader\n"
        "from histobag.errors import SlideOpenError\n"
        f"try:\n    CuCIMReader({str(boxes)!r})\n"
        "except SlideOpenError as exc:\n    print('refused:', exc)\n"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "refused:" in child.stdout and "predictor" in child.stdout
    assert unsupported_reason(fixtures / "lzw.tiff") is None  # LZW with a predictor is read
    refused = [
        ("stripped.tiff", "not tiled"),
        ("zstd.tiff", "compression 50000"),
        ("planar.tiff", "separately"),
    ]
    for name, why in refused:
        assert why in unsupported_reason(fixtures / name)
        with pytest.raises(SlideOpenError, match=why):
            CuCIMReader(str(fixtures / name))
    with pytest.raises(SlideOpenError, match="not a TIFF"):
        CuCIMReader(str(vendor_dir / "boxes.png"))
    with pytest.raises(SlideOpenError, match="does not exist"):
        CuCIMReader(str(fixtures / "nowhere.svs"))


def test_missing_cucim_names_the_extra(fixtures, monkeypatch):
    monkeypatch.setitem(sys.modules, "cucim", None)  # import fails
    with pytest.raises(MissingDependencyError, match=r"histobag\[cucim\]"):
        CuCIMReader(str(fixtures / "jpeg.tiff"))
    with pytest.raises(SlideOpenError, match=r"histobag\[cucim\]"):
        WSI(fixtures / "jpeg.tiff", 32, 64, reader="cucim")


def test_auto_never_tries_cucim_and_a_named_cucim_refuses_a_corrupt_slide(fixtures, vendor_dir):
    """cuCIM is opt-in (``auto=False``): ``auto`` never tries it, so a slide whose JPEG tile is
    corrupt (cuCIM decodes it to black without an error) stays unreadable; named, cuCIM
    refuses it too."""
    assert "cucim" in slide_reader_specs() and not slide_reader_specs()["cucim"].auto
    assert "cucim" not in [s.name for s in candidates(str(fixtures / "jpeg.tiff"))]
    assert open_reader(str(fixtures / "jpeg.tiff"))[0] == "openslide"
    unreadable = vendor_dir / "unreadable.svs"
    assert "does not decode (Jpeg8Error" in unsupported_reason(unreadable)
    with pytest.raises(SlideOpenError) as refused:
        open_reader(str(unreadable))
    assert "cucim" not in str(refused.value)
    with pytest.raises(SlideOpenError, match=r"cuCIM cannot read .*does not decode"):
        open_reader(str(unreadable), "cucim")
    name, reader = open_reader(str(fixtures / "jpeg.tiff"), "cucim")
    assert name == "cucim" and isinstance(reader, CuCIMReader)


def test_gpu_decoding_needs_a_gpu_and_is_recorded(fixtures, monkeypatch):
    import torch

    path = str(fixtures / "jpeg.tiff")
    assert CuCIMReader(path).version == cucim.__version__
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SlideOpenError, match="no CUDA GPU"):
        CuCIMReader(path, device="cuda")
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(SlideOpenError, match="no CUDA GPU"):
        CuCIMReader(path)
    with pytest.raises(SlideOpenError, match="'cpu', 'cuda'"):
        CuCIMReader(path, device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # opening touches no GPU
    reader = CuCIMReader(path)
    assert reader.device == "cuda" and reader.version == f"{cucim.__version__} device=cuda"


def test_label_macro_and_thumbnail_equal_openslides(fixtures):
    path = str(fixtures / "images.svs")
    expected = OpenSlideReader(path).associated_images()
    images = CuCIMReader(path).associated_images()
    assert sorted(images) == sorted(expected) == ["label", "macro", "thumbnail"]
    for name, pixels in images.items():
        assert pixels.dtype == np.uint8 and np.array_equal(pixels, expected[name]), name


def test_a_pickled_reader_reopens_its_file(fixtures):
    reader = CuCIMReader(str(fixtures / "aperio.svs"))
    copy = pickle.loads(pickle.dumps(reader))
    assert copy is not reader and copy.level_dimensions == reader.level_dimensions
    assert np.array_equal(
        copy.read_region((96, 64), 1, (50, 40)), reader.read_region((96, 64), 1, (50, 40))
    )
    assert reader.associated_images() == {} and reader.magnification == 20.0


def test_wsi_tiles_through_cucim_equal_openslides(fixtures):
    cucim_wsi = WSI(fixtures / "jpeg.tiff", tile_px=32, tile_um=64, reader="cucim")
    local = WSI(fixtures / "jpeg.tiff", tile_px=32, tile_um=64)
    assert (cucim_wsi.reader_name, local.reader_name) == ("cucim", "openslide")
    assert cucim_wsi.reader_version == cucim.__version__
    assert cucim_wsi.level == local.level == 1  # read from a lower level
    assert cucim_wsi.mpp == local.mpp == MPP
    assert len(cucim_wsi) > 10 and np.array_equal(cucim_wsi.coords, local.coords)
    indices = np.arange(len(local))
    assert np.array_equal(cucim_wsi.read_tiles(indices), local.read_tiles(indices))


@pytest.mark.parametrize("name", ["jpeg.tiff", "aperio.svs"])
def test_bags_through_cucim_equal_openslides(name, fixtures, tmp_path):
    """``Dataset(..., reader="cucim")``: a worker process reopens the slide with cuCIM; the bag
    equals OpenSlide's, and the run report records ``cucim <version>``."""
    with registered(PIXELNET):
        extractor = histobag.build_feature_extractor(
            "pixelnet", device="cpu", mixed_precision=False
        )
        for reader in ("cucim", "auto"):
            dataset = histobag.Dataset([fixtures / name], None, 16, 32, reader=reader)
            report = dataset.generate_feature_bags(
                extractor, tmp_path / reader, num_workers=1, progress=False
            )
            assert report.ok
    stem = Path(name).stem
    features, coords, _ = read_bag(tmp_path / "cucim", stem)
    reference, reference_coords, _ = read_bag(tmp_path / "auto", stem)
    assert len(features) > 20
    assert np.array_equal(coords, reference_coords)
    assert np.array_equal(features, reference)
    details = json.loads((tmp_path / "cucim" / "run_report.json").read_text())["slides"]
    assert details[stem]["reader"] == f"cucim {cucim.__version__}"
    config = json.loads((tmp_path / "cucim" / "bags_config.json").read_text())
    assert config["reader"] == "cucim"


LOG_CHECK = """
import sys, torch
torch.cuda.is_available = lambda: True  # opening touches no GPU
from histobag.slide.readers.cucim_reader import CuCIMReader
CuCIMReader(sys.argv[1], device="cuda")  # opened only: there is no GPU to decode on
CuCIMReader(sys.argv[1]).read_region((0, 0), 0, (32, 32))
"""


def test_opening_leaves_no_cufile_log_in_the_working_folder(fixtures, tmp_path):
    """cuCIM's cuFile layer writes ./cufile.log when it starts without a CUDA driver; the
    reader sends it elsewhere, so a run leaves users' folders as they were."""
    env = {k: v for k, v in os.environ.items() if k != "CUFILE_LOGFILE_PATH"}
    done = subprocess.run(
        [sys.executable, "-c", LOG_CHECK, str(fixtures / "jpeg.tiff")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "cufile.log").exists()


def test_the_readers_listing_shows_cucim_as_used_by_name_only(capsys):
    assert main(["slides", "--readers"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    names = [row[0] for row in rows]
    assert names[-1] == "cucim" and rows[-1][1:3] == ["by", "name"]
    assert names.index("openslide") < names.index("cucim")
