"""The ``image``, ``ome-tiff`` and ``ome-zarr`` readers on generated files of real histology
(scikit-image's immunohistochemistry image, mirrored to about 1500 px): PNG, JPEG, stripped
and tiled TIFF, OME-TIFF pyramids (SubIFDs) and OME-Zarr (NGFF 0.4 and 0.5).

Every file's pixels are compared with the array it was written from (each level downsampled
the way it was written), and with OpenSlide's wherever OpenSlide opens the file too; regions
across the edge are white.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import zarr
from PIL import Image
from skimage import data

from histobag.errors import MissingDependencyError, SlideOpenError
from histobag.slide import WSI
from histobag.slide.readers import open_reader, reader_names
from histobag.slide.readers.image_reader import PillowImageReader, open_image
from histobag.slide.readers.openslide_reader import rgba_to_rgb
from histobag.slide.readers.tiff_reader import OmeTiffReader, TiffReader
from histobag.slide.readers.zarr_reader import OmeZarrReader
from tests.core.http_server import serve_folder

#: Level-0 size of the generated slides: odd, so halved levels round.
WIDTH, HEIGHT = 1501, 1203


@pytest.fixture(scope="module", autouse=True)
def registered():
    """Core registers the three readers (builtin.py)."""
    assert {"image", "ome-tiff", "ome-zarr"} <= set(reader_names())


@pytest.fixture(scope="module")
def histology() -> np.ndarray:
    """(HEIGHT, WIDTH, 3) uint8 IHC texture, mirrored so it has no seams."""
    ihc = data.immunohistochemistry()
    block = np.concatenate(
        [np.concatenate([ihc, ihc[:, ::-1]], 1), np.concatenate([ihc[::-1], ihc[::-1, ::-1]], 1)]
    )
    return np.ascontiguousarray(np.tile(block, (2, 2, 1))[:HEIGHT, :WIDTH])


def halve(image: np.ndarray) -> np.ndarray:
    """The next level as the fixtures write it: 2 x 2 means (the odd last row/column kept)."""
    h, w = image.shape[:2]
    padded = np.pad(
        image.astype(np.uint16), [(0, h % 2), (0, w % 2)] + [(0, 0)] * (image.ndim - 2), "edge"
    )
    return (
        (padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2] + 2) // 4
    ).astype(np.uint8)


def pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    out = [image]
    for _ in range(levels - 1):
        out.append(halve(out[-1]))
    return out


def expected(level: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """``level[y:y+height, x:x+width]`` with white wherever that lies beyond the level."""
    out = np.full((height, width, 3), 255, np.uint8)
    h, w = level.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, w), min(y + height, h)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = level[y0:y1, x0:x1]
    return out


def regions(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) in a level's pixels: inside, across each edge and corner, beyond it."""
    return [
        (100, 60, 300, 200),
        (width - 150, 40, 300, 200),
        (30, height - 90, 256, 256),
        (width - 100, height - 50, 256, 128),
        (-40, -70, 200, 150),
        (width + 10, 0, 64, 64),
    ]


def check_levels(reader, levels: list[np.ndarray]) -> None:
    """Every region of every level equals the arrays (white beyond the edge)."""
    assert reader.level_dimensions == tuple((a.shape[1], a.shape[0]) for a in levels)
    for level, array in enumerate(levels):
        downsample = reader.level_downsamples[level]
        for x, y, w, h in regions(array.shape[1], array.shape[0]):
            location = (round(x * downsample), round(y * downsample))
            got = reader.read_region(location, level, (w, h))
            assert got.dtype == np.uint8 and got.shape == (h, w, 3)
            np.testing.assert_array_equal(got, expected(array, x, y, w, h), f"{level} {x},{y}")


def check_equals_openslide(reader, path: Path, levels: int) -> None:
    """Regions of the first ``levels`` levels equal OpenSlide's, composited onto white."""
    slide = openslide.OpenSlide(str(path))
    try:
        for level in range(levels):
            downsample = slide.level_downsamples[level]
            width, height = slide.level_dimensions[level]
            for x, y, w, h in regions(width, height):
                location = (round(x * downsample), round(y * downsample))
                ours = reader.read_region(location, level, (w, h))
                theirs = rgba_to_rgb(slide.read_region(location, level, (w, h)))
                assert np.array_equal(ours, theirs), (level, x, y)
    finally:
        slide.close()


# --- PNG and JPEG -----------------------------------------------------------------------------


def test_png_reads_as_the_array_with_white_beyond_the_edge(histology, tmp_path):
    path = tmp_path / "core.png"
    Image.fromarray(histology).save(path)
    with pytest.raises(openslide.OpenSlideUnsupportedFormatError):
        openslide.OpenSlide(str(path))  # so "auto" falls through to the image reader
    name, reader = open_reader(str(path))
    assert name == "image" and isinstance(reader, PillowImageReader)
    assert reader.dimensions == (WIDTH, HEIGHT) and reader.level_downsamples == (1.0,)
    assert reader.mpp is None and reader.vendor == "png"
    check_levels(reader, [histology])


def test_png_gray_and_alpha_become_rgb_on_white(histology, tmp_path):
    small = histology[:300, :450]
    gray = small[..., 1]
    alpha = np.repeat(np.array([255, 128, 0], np.uint8), 150)[None].repeat(300, 0)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([small, alpha])).save(tmp_path / "alpha.png")
    check_levels(open_image(str(tmp_path / "gray.png")), [np.repeat(gray[..., None], 3, -1)])
    rgba = open_image(str(tmp_path / "alpha.png")).read_region((0, 0), 0, (450, 300))
    assert np.array_equal(rgba[:, :150], small[:, :150])  # opaque
    half = (small[:, 150:300].astype(int) * 128 + 255 * 127 + 127) // 255
    assert np.array_equal(rgba[:, 150:300], half)  # half transparent: blended with white
    assert (rgba[:, 300:] == 255).all()  # transparent


@pytest.mark.parametrize(
    ("dpi", "mpp"), [(25400 / 0.5, 0.5), (25400 / 0.25, 0.25), (72, None), (300, None)]
)
def test_image_mpp_only_when_the_resolution_is_plausible(histology, tmp_path, dpi, mpp):
    small = histology[:64, :64]
    Image.fromarray(small).save(tmp_path / "a.png", dpi=(dpi, dpi))
    names = ["a.png"]
    if dpi < 2**16:  # JFIF stores 16-bit dots per inch: 0.39 µm/px at best
        Image.fromarray(small).save(tmp_path / "a.jpg", dpi=(round(dpi), round(dpi)))
        names.append("a.jpg")
    for name in names:
        got = open_image(str(tmp_path / name)).mpp
        assert got == (None if mpp is None else pytest.approx(mpp, rel=1e-4)), name


def test_jpeg_reads_as_pillow_decodes_it(histology, tmp_path):
    path = tmp_path / "core.jpeg"
    Image.fromarray(histology).save(path, quality=85)
    name, reader = open_reader(str(path))
    assert name == "image" and reader.vendor == "jpeg"
    check_levels(reader, [np.asarray(Image.open(path).convert("RGB"))])


def test_not_an_image_is_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(SlideOpenError, match=r"notes\.png"):
        open_reader(str(path), "image")


# --- plain TIFF -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},  # uncompressed, one strip: memory-mapped
        {"compression": "zlib", "rowsperstrip": 64},
        {"compression": "lzw", "rowsperstrip": 100},
    ],
    ids=["contiguous", "deflate-strips", "lzw-strips"],
)
def test_stripped_tiff_opens_only_with_the_image_reader(histology, tmp_path, options):
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, histology, photometric="rgb", **options)
    name, reader = open_reader(str(path))
    assert name == "image" and isinstance(reader, TiffReader)
    check_levels(reader, [histology])
    reader.close()


def test_tiff_with_separate_sample_planes_is_decoded_whole(histology, tmp_path):
    path = tmp_path / "planar.tif"
    planes = np.moveaxis(histology, -1, 0)  # (S, Y, X)
    tifffile.imwrite(path, planes, photometric="rgb", planarconfig="separate", tile=(256, 256))
    reader = TiffReader(str(path))
    assert not reader._levels[0].by_segment
    check_levels(reader, [histology])


def test_stripped_tiff_decodes_only_the_strips_a_region_covers(histology, tmp_path):
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, histology, photometric="rgb", compression="zlib", rowsperstrip=32)
    reader = TiffReader(str(path))
    reader.read_region((0, 100), 0, (256, 64))  # rows 100..163: strips 3, 4, 5
    assert sorted(index for _, index in reader._cache) == [3, 4, 5]


def test_gray_and_min_is_white_tiff(histology, tmp_path):
    gray = histology[..., 0]
    tifffile.imwrite(tmp_path / "black.tif", gray, photometric="minisblack", tile=(256, 256))
    tifffile.imwrite(tmp_path / "white.tif", 255 - gray, photometric="miniswhite", rowsperstrip=50)
    rgb = np.repeat(gray[..., None], 3, -1)
    check_levels(TiffReader(str(tmp_path / "black.tif")), [rgb])
    check_levels(TiffReader(str(tmp_path / "white.tif")), [rgb])


def test_tiff_that_is_not_bright_field_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "u16.tif", np.zeros((64, 64), np.uint16))
    with pytest.raises(SlideOpenError, match="8-bit"):
        TiffReader(str(tmp_path / "u16.tif"))


@pytest.mark.parametrize("compression", [None, "jpeg"])
def test_tiled_tiff_stays_with_openslide_and_both_read_the_same(histology, tmp_path, compression):
    path = tmp_path / "tiled.tiff"
    tifffile.imwrite(path, histology, photometric="rgb", tile=(256, 256), compression=compression)
    name, _ = open_reader(str(path))
    assert name == "openslide"
    reader = TiffReader(str(path))
    check_levels(reader, [tifffile.imread(path)])
    check_equals_openslide(reader, path, levels=1)


def test_pyramidal_tiff_levels_equal_openslide(histology, tmp_path):
    """Both read each level; sides divisible by 4 so that every level's downsample is whole
    (elsewhere OpenSlide interpolates between level pixels)."""
    path = tmp_path / "pyramid.tif"
    levels = pyramid(histology[:1200, :1500], 3)
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(levels):
            tif.write(
                level,
                photometric="rgb",
                tile=(256, 256),
                compression="zlib",
                subfiletype=1 if i else 0,
                resolution=(20000, 20000) if i == 0 else None,
                resolutionunit="CENTIMETER" if i == 0 else None,
            )
    reader = open_image(str(path))
    assert openslide.OpenSlide(str(path)).level_count == 3
    assert reader.mpp == pytest.approx(
        float(openslide.OpenSlide(str(path)).properties["openslide.mpp-x"])
    )
    check_levels(reader, levels)
    check_equals_openslide(reader, path, levels=3)


# --- OME-TIFF ---------------------------------------------------------------------------------


def write_ome_tiff(path: Path, levels: list[np.ndarray], mpp: float) -> None:
    """An OME-TIFF with its pyramid in SubIFDs, as tifffile, bfconvert and QuPath write them."""
    options = {"photometric": "rgb", "tile": (256, 256), "compression": "zlib"}
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(
            levels[0],
            subifds=len(levels) - 1,
            metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp},
            **options,
        )
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **options)


def test_ome_tiff_pyramid_and_mpp_come_from_the_ome_tiff_reader(histology, tmp_path):
    path = tmp_path / "slide.ome.tiff"
    levels = pyramid(histology, 3)
    write_ome_tiff(path, levels, mpp=0.25)
    name, reader = open_reader(str(path))
    assert name == "ome-tiff" and isinstance(reader, OmeTiffReader)
    assert reader.mpp == 0.25 and reader.vendor == "ome-tiff"
    assert reader.properties["openslide.mpp-x"] == "0.25"
    # no scale is recorded: the sizes' ratios, as OpenSlide computes them
    assert reader.level_downsamples == pytest.approx((1.0, 2.0, 4.0), rel=2e-3)
    check_levels(reader, levels)


def test_openslide_sees_an_ome_tiff_as_one_level_with_the_same_pixels(histology, tmp_path):
    """Why ``ome-tiff`` is tried before OpenSlide: OpenSlide ignores the SubIFD pyramid and the
    pixel size. Its one level holds the same pixels."""
    path = tmp_path / "slide.ome.tif"
    write_ome_tiff(path, pyramid(histology, 3), mpp=0.5)
    slide = openslide.OpenSlide(str(path))
    assert slide.level_count == 1 and "openslide.mpp-x" not in slide.properties
    slide.close()
    check_equals_openslide(OmeTiffReader(str(path)), path, levels=1)


def test_ome_tiff_reader_leaves_a_plain_tiff_to_the_next_reader(histology, tmp_path):
    path = tmp_path / "plain.ome.tif"  # named like OME-TIFF, no OME-XML
    tifffile.imwrite(path, histology, photometric="rgb", tile=(256, 256), ome=False)
    with pytest.raises(SlideOpenError, match="not an OME-TIFF"):
        OmeTiffReader(str(path))
    assert open_reader(str(path))[0] == "openslide"


# --- OME-Zarr ---------------------------------------------------------------------------------


def write_ome_zarr(
    path: Path,
    levels: list[np.ndarray],
    *,
    version: str = "0.4",
    mpp: float = 0.25,
    unit: str | None = "micrometer",
    channel_axis: bool = True,
) -> Path:
    """An OME-Zarr image written with zarr: (c, y, x) arrays in 256-pixel chunks, each level's
    ``scale`` doubling (NGFF 0.4: zarr v2; 0.5: zarr v3 with the metadata under "ome")."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if unit:
        for axis in axes:
            axis["unit"] = unit
    if channel_axis:
        axes.insert(0, {"name": "c", "type": "channel"})
    datasets = []
    for i, level in enumerate(levels):
        array = np.moveaxis(level, -1, 0) if channel_axis else level
        chunks = (array.shape[0], 256, 256) if channel_axis else (256, 256)
        stored = group.create_array(str(i), shape=array.shape, chunks=chunks, dtype=array.dtype)
        stored[...] = array
        scale = [mpp * 2**i] * 2
        datasets.append(
            {
                "path": str(i),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0] * channel_axis + scale}
                ],
            }
        )
    multiscale = {"version": version, "name": path.name, "axes": axes, "datasets": datasets}
    if version == "0.4":
        group.attrs["multiscales"] = [multiscale]
    else:
        del multiscale["version"]
        group.attrs["ome"] = {"version": version, "multiscales": [multiscale]}
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_levels_downsamples_and_mpp(histology, tmp_path, version):
    levels = pyramid(histology, 4)
    path = write_ome_zarr(tmp_path / "slide.ome.zarr", levels, version=version, mpp=0.25)
    name, reader = open_reader(str(path))
    assert name == "ome-zarr" and isinstance(reader, OmeZarrReader)
    assert reader.level_downsamples == (1.0, 2.0, 4.0, 8.0)  # from the scales, not the sizes
    assert reader.mpp == 0.25 and reader.properties["openslide.mpp-x"] == "0.25"
    check_levels(reader, levels)


def test_ome_zarr_in_nanometres_without_channels(histology, tmp_path):
    gray = histology[..., 2]
    levels = pyramid(gray, 2)
    path = write_ome_zarr(
        tmp_path / "gray.zarr", levels, mpp=500.0, unit="nanometer", channel_axis=False
    )
    reader = OmeZarrReader(str(path))
    assert reader.mpp == pytest.approx(0.5)
    check_levels(reader, [np.repeat(a[..., None], 3, -1) for a in levels])


def test_ome_zarr_without_units_has_no_mpp(histology, tmp_path):
    path = write_ome_zarr(tmp_path / "s.zarr", pyramid(histology[:300, :300], 2), unit=None)
    assert OmeZarrReader(str(path)).mpp is None


def test_ome_zarr_bioformats2raw_layout(histology, tmp_path):
    root = tmp_path / "converted.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    levels = pyramid(histology[:400, :500], 2)
    write_ome_zarr(root / "0", levels)
    check_levels(OmeZarrReader(str(root)), levels)


def test_ome_zarr_refuses_what_is_not_a_bright_field_image(tmp_path):
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("0", shape=(8, 8), dtype="uint8")
    with pytest.raises(SlideOpenError, match="no OME-Zarr multiscales"):
        OmeZarrReader(str(tmp_path / "plain.zarr"))
    fluorescence = [np.zeros((64, 64, 5), np.uint16)]
    write_ome_zarr(tmp_path / "if.zarr", fluorescence)
    with pytest.raises(SlideOpenError, match="5 channels of uint16"):
        OmeZarrReader(str(tmp_path / "if.zarr"))
    with pytest.raises(SlideOpenError, match="does not exist"):
        OmeZarrReader(str(tmp_path / "missing.zarr"))


def test_ome_zarr_without_zarr_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"histobag\[zarr\]"):
        OmeZarrReader(str(tmp_path))


# --- through WSI ------------------------------------------------------------------------------


def test_wsi_tiles_of_one_image_are_the_same_through_every_reader(histology, tmp_path):
    """PNG (mpp given), OME-TIFF and OME-Zarr of one array, and OpenSlide on the OME-TIFF:
    the same tiles."""
    levels = pyramid(histology, 3)
    Image.fromarray(histology).save(tmp_path / "a.png")
    write_ome_tiff(tmp_path / "a.ome.tif", levels, mpp=0.5)
    write_ome_zarr(tmp_path / "a.ome.zarr", levels, mpp=0.5)
    settings = {"tile_px": 128, "tile_um": 64, "tissue": None}  # read from level 0
    slides = [
        WSI(tmp_path / "a.png", mpp=0.5, **settings),
        WSI(tmp_path / "a.ome.tif", **settings),
        WSI(tmp_path / "a.ome.zarr", **settings),
        WSI(tmp_path / "a.ome.tif", reader="openslide", mpp=0.5, **settings),
    ]
    assert [s.reader_name for s in slides] == ["image", "ome-tiff", "ome-zarr", "openslide"]
    reference = slides[0].read_tiles(range(len(slides[0])))
    assert len(reference) == (WIDTH // 128) * (HEIGHT // 128)
    for slide in slides[1:]:
        assert np.array_equal(slide.read_tiles(range(len(slide))), reference), slide.reader_name
    # a coarser tile reads from level 2 of both pyramids: the same written pixels
    coarse = [
        WSI(tmp_path / n, tile_px=64, tile_um=128, tissue=None) for n in ("a.ome.tif", "a.ome.zarr")
    ]
    assert coarse[0].level == coarse[1].level == 2
    assert np.array_equal(
        coarse[0].read_tiles(range(len(coarse[0]))), coarse[1].read_tiles(range(len(coarse[1])))
    )


def test_ome_zarr_over_http_reads_only_the_chunks_it_needs(histology, tmp_path):
    """A URL opens through zarr's fsspec store (fsspec's HTTP filesystem needs aiohttp): a
    small region fetches a fraction of the image, and the tiles equal the local folder's."""
    levels = pyramid(histology, 3)
    folder = write_ome_zarr(tmp_path / "remote.ome.zarr", levels)
    stored = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    with serve_folder(tmp_path) as server:
        url = server.url("remote.ome.zarr")
        name, reader = open_reader(url)
        assert name == "ome-zarr" and reader.level_dimensions[0] == (WIDTH, HEIGHT)
        got = reader.read_region((300, 200), 0, (256, 256))
        assert np.array_equal(got, expected(levels[0], 300, 200, 256, 256))
        assert server.bytes_served < 0.3 * stored
        settings = {"tile_px": 128, "tile_um": 64, "tissue": None}
        remote, local = WSI(url, **settings), WSI(folder, **settings)
        assert remote.reader_name == "ome-zarr"
        assert np.array_equal(remote.read_tiles(range(12)), local.read_tiles(range(12)))
