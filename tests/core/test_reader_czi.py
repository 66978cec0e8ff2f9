"""The ``czi`` reader (pylibCZIrw): Zeiss CZI mosaics, tile for tile as the pixels written.

The fixture is a CZI written by pylibCZIrw's own writer (zstd-compressed, lossless) from real
histology (scikit-image's IHC sample): four subblocks (a 2 x 2 mosaic) plus one small
subblock far away, so the slide is mostly background where no subblock lies, and its plane
coordinates start at (-300, 120), not (0, 0). The expected slide is a white canvas with the
same subblocks pasted in.

OpenSlide cannot read these files (it refuses the writer's ``Z`` subblock dimension), so the
reference is the canvas itself. Level 0 must equal it exactly. The file has no pyramid
subblocks, so libCZI makes the lower levels by nearest-neighbour sampling (level pixel ``i``
is level-0 pixel ``i * downsample``): they must equal ``canvas[::s, ::s]`` exactly except on
the seams, the level pixels sampled exactly on a subblock's edge, which libCZI rounds per
subblock (there a pixel may come from up to ``s`` level-0 pixels away; see
:func:`_expected`). Against the block-mean downsample they differ by no more than
nearest-neighbour sampling does.
"""

import functools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pylibCZIrw import czi
from skimage.data import immunohistochemistry

import histobag
from histobag.errors import MissingDependencyError, SlideOpenError
from histobag.plugins import slide_reader_specs
from histobag.slide import WSI
from histobag.slide.readers import open_reader
from histobag.slide.readers.czi_reader import SMALLEST_LEVEL_PX, CziReader, is_czi_file
from tests.core.bag_helpers import PIXELNET
from tests.core.toy_models import registered

MPP = 0.5
MAGNIFICATION = 20.0
ORIGIN = (-300, 120)  # CZI plane coordinates of the slide's top-left corner
SIZE = (2048, 1024)  # (width, height): three levels at downsamples 1, 2, 4
TILE = (224, 192)  # (width, height) of the mosaic's subblocks


@pytest.fixture(scope="module", autouse=True)
def czi_reader():
    """Core registers the ``czi`` reader (builtin.py)."""
    assert "czi" in slide_reader_specs()


@functools.cache
def _subblocks() -> list[tuple[tuple[int, int], np.ndarray]]:
    """``[((x, y) in slide pixels, RGB pixels)]``: a 2 x 2 mosaic of IHC tissue at the
    slide's top-left corner and a 64 px piece at its bottom-right corner."""
    ihc = immunohistochemistry()
    tw, th = TILE
    blocks = [
        ((col * tw, row * th), ihc[row * th : (row + 1) * th, col * tw : (col + 1) * tw])
        for row in range(2)
        for col in range(2)
    ]
    blocks.append(((SIZE[0] - 64, SIZE[1] - 64), ihc[448:, 448:]))
    return blocks


@functools.cache
def _canvas() -> np.ndarray:
    """The expected level 0: white, with the subblocks pasted in."""
    canvas = np.full((SIZE[1], SIZE[0], 3), 255, np.uint8)
    for (x, y), pixels in _subblocks():
        canvas[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels
    canvas.flags.writeable = False  # cached: shared by every test
    return canvas


@functools.cache
def _padded(step: int) -> np.ndarray:
    """The canvas with ``2 * step`` white pixels around it (seam neighbourhoods)."""
    return np.pad(_canvas(), ((step * 2,) * 2, (step * 2,) * 2, (0, 0)), constant_values=255)


def _write_czi(path: Path, *, objective: bool = True) -> Path:
    """A CZI of :func:`_subblocks` (BGR subblocks, zstd) with the pixel size in metres, as
    ZEN records it, and optionally a 20x objective."""
    with czi.create_czi(str(path), compression_options="zstd1:ExplicitLevel=1") as writer:
        for (x, y), pixels in _subblocks():
            bgr = np.ascontiguousarray(pixels[..., ::-1])
            assert writer.write(bgr, location=(ORIGIN[0] + x, ORIGIN[1] + y))
        writer.write_metadata(scale_x=MPP * 1e-6, scale_y=MPP * 1e-6)
    if objective:
        with czi.edit_czi(str(path)) as editor:
            builder = editor.create_metadata_builder()
            instrument = (
                '<Instrument><Objectives><Objective Id="Objective:1">'
                f"<NominalMagnification>{MAGNIFICATION:g}</NominalMagnification>"
                "</Objective></Objectives></Instrument>"
            )
            builder.set_xml(
                builder.get_xml().replace("<Information>", "<Information>" + instrument, 1)
            )
            builder.commit()
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return _write_czi(tmp_path_factory.mktemp("czi") / "ihc.czi")


def _expected(location, level, size) -> tuple[np.ndarray, np.ndarray]:
    """The canvas region a reader returns, and where it may differ (its seams).

    libCZI zooms without pyramid subblocks by nearest-neighbour sampling: level pixel ``i``
    is level-0 pixel ``i * s`` (``s = 2**level``), white beyond the slide. It scales each
    subblock on its own, though, rounding its edges: a level pixel whose sample lies exactly
    on a subblock's edge may take a pixel up to ``s`` level-0 pixels away (the neighbouring
    subblock's, or the background's). Those pixels are the seams.
    """
    step = 2**level
    x, y = location[0] // step, location[1] // step
    out = np.full((size[1], size[0], 3), 255, np.uint8)
    level_canvas = _canvas()[::step, ::step]
    h, w = level_canvas.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + size[0], w), min(y + size[1], h)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = level_canvas[y0:y1, x0:x1]
    edges_x = {e for (bx, _), p in _subblocks() for e in (bx, bx + p.shape[1])}
    edges_y = {e for (_, by), p in _subblocks() for e in (by, by + p.shape[0])}
    columns = np.isin((x + np.arange(size[0])) * step, list(edges_x))
    rows = np.isin((y + np.arange(size[1])) * step, list(edges_y))
    seams = (rows[:, None] | columns[None, :]) if level else np.zeros(out.shape[:2], bool)
    return out, seams


def _assert_matches(got: np.ndarray, location, level, size) -> None:
    """``got`` is the expected region exactly, but on seams a level-0 pixel within ``s``."""
    expected, seams = _expected(location, level, size)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.array_equal(got[~seams], expected[~seams])
    step = 2**level
    padded = _padded(step)
    for i, j in np.argwhere(seams):
        ys = location[1] // step * step + i * step + step * 2 + np.arange(-step, step + 1)
        xs = location[0] // step * step + j * step + step * 2 + np.arange(-step, step + 1)
        ys, xs = ys.clip(0, padded.shape[0] - 1), xs.clip(0, padded.shape[1] - 1)
        window = padded[ys[:, None], xs[None, :]].reshape(-1, 3)
        assert (window == got[i, j]).all(axis=1).any(), (i, j)


def test_the_fixture_is_a_small_mosaic_czi_with_an_offset_origin(slide):
    assert is_czi_file(slide) and slide.stat().st_size < 600_000
    with czi.open_czi(str(slide)) as document:
        box = document.total_bounding_rectangle
        assert (box.x, box.y, box.w, box.h) == (*ORIGIN, *SIZE)
        count = []
        document.enumerate_subblocks(lambda index, info: count.append(index) is None)
        assert len(count) == 5
        assert document.pixel_types == {0: "Bgr24"}


def test_the_reader_reports_size_levels_mpp_and_magnification(slide):
    name, reader = open_reader(str(slide), reader="czi")
    try:
        assert name == "czi" and isinstance(reader, CziReader)
        assert reader.dimensions == SIZE
        assert reader.level_dimensions == ((2048, 1024), (1024, 512), (512, 256))
        assert reader.level_downsamples == (1.0, 2.0, 4.0)
        assert min(reader.level_dimensions[-1]) >= 1
        assert max(reader.level_dimensions[-1]) >= SMALLEST_LEVEL_PX > max(SIZE) / 8
        assert reader.mpp == pytest.approx(MPP)
        assert reader.magnification == pytest.approx(MAGNIFICATION)
        assert reader.properties["openslide.mpp-x"] == repr(reader.mpp)
        assert reader.properties["openslide.objective-power"] == repr(MAGNIFICATION)
        assert reader.vendor == "zeiss" and reader.version
        assert reader.best_level_for_downsample(3.0) == 1
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("level", "location", "size"),
    [
        (0, (0, 0), (512, 448)),  # the top-left corner: the mosaic and background around it
        (0, (200, 150), (150, 130)),  # inside, across the four subblocks' seams
        (0, (-40, -20), (120, 90)),  # across the top-left edge: white outside
        (0, (1950, 900), (160, 160)),  # the corner subblock, across the bottom-right edge
        (0, (2100, 1100), (16, 16)),  # wholly outside
        (1, (0, 0), (224, 192)),  # downsample 2, the mosaic
        (1, (-64, 400), (600, 200)),  # downsample 2, across two edges
        (2, (0, 0), (512, 256)),  # downsample 4, the whole level
        (2, (1900, 900), (64, 64)),  # downsample 4, across the edge
    ],
)
def test_regions_equal_the_written_pixels(slide, level, location, size):
    _, reader = open_reader(str(slide), reader="czi")
    try:
        got = reader.read_region(location, level, size)
    finally:
        reader.close()
    _assert_matches(got, location, level, size)


@pytest.mark.parametrize("level", [1, 2])
def test_lower_levels_are_the_slide_downsampled(slide, level):
    """Against the block-mean downsample of the tissue, the level differs by what
    nearest-neighbour sampling itself costs (computed from the canvas: 5.6 grey levels on
    average at 2x, 11.6 at 4x), plus 0.5 for the seams; the same region read one level
    pixel off differs by 12.0 and 15.8."""
    step = 2**level
    w, h = 448 // step, 384 // step
    _, reader = open_reader(str(slide), reader="czi")
    try:
        got = reader.read_region((0, 0), level, (w, h)).astype(float)
    finally:
        reader.close()
    tissue = _canvas()[:384, :448].astype(float)
    means = tissue.reshape(h, step, w, step, 3).mean(axis=(1, 3))
    sampling = np.abs(tissue[::step, ::step] - means).mean()
    assert np.abs(got - means).mean() <= sampling + 0.5


def test_wsi_tiles_through_the_reader_equal_the_written_pixels(slide):
    for tile_um, level in ((32, 0), (64, 1)):  # 64 px tiles at 0.5 µm: level 0, then 2x
        wsi = WSI(slide, tile_px=64, tile_um=tile_um, reader="czi", tissue=None)
        try:
            assert wsi.reader_name == "czi" and wsi.mpp == pytest.approx(MPP)
            assert wsi.level == level and wsi.read_px == 64
            side = 64 * 2**level
            assert len(wsi) == (SIZE[0] // side) * (SIZE[1] // side)
            tiles = wsi.read_tiles(np.arange(len(wsi)))
            for tile, (x, y) in zip(tiles, wsi.coords, strict=True):
                _assert_matches(tile, (x, y), level, (64, 64))
            # A tile read alone equals the same pixels read in a larger region: libCZI's
            # seams do not depend on the region asked for (WSI reads strips of tiles).
            _, reader = open_reader(str(slide), reader="czi")
            strip = reader.read_region((0, 0), level, (SIZE[0] // 2**level, 64))
            reader.close()
            for tile, (x, y) in zip(tiles, wsi.coords, strict=True):
                if y == 0:
                    assert np.array_equal(tile, strip[:, x // 2**level : x // 2**level + 64])
        finally:
            wsi.close()


def test_auto_picks_the_czi_reader_for_a_czi_file(slide):
    name, reader = open_reader(str(slide))
    reader.close()
    assert name == "czi"


def test_a_dataset_of_a_folder_with_a_czi_makes_bags(slide, tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    _write_czi(folder / "ihc.czi")
    with registered(PIXELNET):
        extractor = histobag.build_feature_extractor(
            "pixelnet", device="cpu", mixed_precision=False
        )
        dataset = histobag.Dataset(folder, tile_px=16, tile_um=32)
        report = histobag.generate_feature_bags(
            extractor, dataset, tmp_path / "bags", num_workers=0, progress=False
        )
    assert report.ok and list(report.done) == ["ihc"]
    bag = torch.load(tmp_path / "bags" / "ihc.pt", weights_only=True)
    # Tissue only: tiles (64 px at level 0) of the 448 x 384 mosaic and the corner piece.
    assert 4 < bag.shape[0] <= math.ceil(448 / 64) * math.ceil(384 / 64) + 1


def test_without_objective_or_scaling_they_are_unrecorded(tmp_path):
    path = tmp_path / "bare.czi"
    with czi.create_czi(str(path)) as writer:
        writer.write(np.full((32, 48, 3), 128, np.uint8), location=(5, 7))
        writer.write_metadata()  # no pixel size
    reader = CziReader(str(path))
    try:
        assert reader.dimensions == (48, 32) and reader.level_dimensions == ((48, 32),)
        assert reader.mpp is None and reader.magnification is None
        assert "openslide.mpp-x" not in reader.properties
        assert np.array_equal(reader.read_region((0, 0), 0, (48, 32)), np.full((32, 48, 3), 128))
    finally:
        reader.close()


def test_what_is_not_a_czi_slide_is_refused_clearly(tmp_path):
    not_czi = tmp_path / "slide.czi"
    not_czi.write_bytes(b"\0" * 200)
    with pytest.raises(SlideOpenError, match="not a CZI file"):
        CziReader(str(not_czi))
    with pytest.raises(SlideOpenError, match="does not exist"):
        CziReader(str(tmp_path / "missing.czi"))
    gray16 = tmp_path / "fluorescence.czi"
    with czi.create_czi(str(gray16)) as writer:
        writer.write(np.zeros((16, 16), np.uint16), plane={"C": 0})
        writer.write(np.zeros((16, 16), np.uint16), plane={"C": 1})
        writer.write_metadata()
    with pytest.raises(SlideOpenError, match="bright-field"):
        CziReader(str(gray16))


def test_without_pylibczirw_the_error_names_the_extra(slide, monkeypatch):
    monkeypatch.setitem(sys.modules, "pylibCZIrw.czi", None)  # makes the import raise
    with pytest.raises(MissingDependencyError, match=r"histobag\[czi\]"):
        CziReader(str(slide))


def test_a_gray_slide_reads_as_rgb_and_a_pixel_size_not_in_metres_is_not_trusted(tmp_path):
    path = tmp_path / "gray.czi"
    gray = immunohistochemistry()[:40, :56, 1]
    with czi.create_czi(str(path)) as writer:
        writer.write(gray[..., None], location=(0, 0))
        writer.write_metadata(scale_x=0.5, scale_y=0.5)  # 0.5 m: µm written as metres
    reader = CziReader(str(path))
    try:
        assert reader.properties["czi.pixel-type"] == "Gray8"
        assert np.array_equal(
            reader.read_region((0, 0), 0, (56, 40)), np.repeat(gray[..., None], 3, -1)
        )
        assert reader.mpp is None  # the user passes WSI(..., mpp=) instead
    finally:
        reader.close()
