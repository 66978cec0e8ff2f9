"""WSI: tile grid, level choice, pixels equal to OpenSlide's, tissue detection, ROIs, pickling."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import openslide
import pytest
from PIL import Image

from histobag.errors import HistobagError
from histobag.slide import WSI, TileSettingsError
from histobag.slide.errors import ROIError
from histobag.slide.roi import ROI, load_rois
from histobag.slide.tissue import grayspace_fraction, saturation


def direct_read(path, location, level, size) -> np.ndarray:
    """OpenSlide's region composited onto white, written independently of histobag."""
    region = openslide.OpenSlide(str(path)).read_region(location, level, size)
    white = Image.new("RGBA", region.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, region).convert("RGB"))


@pytest.fixture(scope="module")
def wsi(slide_path) -> WSI:
    return WSI(slide_path, 256, "20x")


def test_tiles_and_coords_equal_direct_openslide_reads(wsi, slide_path):
    assert wsi.level == 0
    assert wsi.read_px == 256
    assert wsi.full_extract_px == 256
    assert wsi.coords.dtype == np.int64
    assert wsi.coords.shape == (len(wsi), 2)
    assert len(wsi) > 10
    # Coordinates are the grid positions of the kept cells, in row-major order.
    rows, cols = np.nonzero(wsi.grid)
    np.testing.assert_array_equal(wsi.grid_index, np.stack([rows, cols], 1))
    np.testing.assert_array_equal(wsi.coords, np.stack([cols * 256, rows * 256], 1))
    indices = [0, len(wsi) // 2, len(wsi) - 1]
    tiles = wsi.read_tiles(indices)
    assert tiles.shape == (3, 256, 256, 3)
    assert tiles.dtype == np.uint8
    for tile, i in zip(tiles, indices):
        x, y = wsi.coords[i]
        np.testing.assert_array_equal(
            tile, direct_read(slide_path, (int(x), int(y)), 0, (256, 256))
        )
    np.testing.assert_array_equal(wsi.read_tile(indices[1]), tiles[1])


def test_tiles_read_from_a_lower_level_equal_openslide(slide_path):
    exact = WSI(slide_path, 256, "5x", tissue=None)  # 1024 level-0 px = 256 px on level 1
    assert (exact.level, exact.read_px, exact.full_extract_px) == (1, 256, 1024)
    x, y = exact.coords[3]
    expected = direct_read(slide_path, (int(x), int(y)), 1, (256, 256))
    np.testing.assert_array_equal(exact.read_tile(3), expected)

    resized = WSI(slide_path, 256, "2.5x", tissue=None)  # 512 px on level 1, resized to 256
    assert (resized.level, resized.read_px) == (1, 512)
    x, y = resized.coords[0]
    region = Image.fromarray(direct_read(slide_path, (int(x), int(y)), 1, (512, 512)))
    expected = np.asarray(region.resize((256, 256), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(resized.read_tile(0), expected)


@pytest.mark.parametrize(
    ("tile_um", "level", "extent"),
    [("40x", 0, 128), ("20x", 0, 256), ("10x", 0, 512), ("5x", 1, 1024), ("2.5x", 1, 2048),
     ("1.25x", 2, 4096), (128, 0, 256), (512.0, 1, 1024)],
)  # fmt: skip
def test_magnification_picks_the_right_level(slide_path, tile_um, level, extent):
    wsi = WSI(slide_path, 256, tile_um, tissue=None, use_edge_tiles=True)
    assert [lv.downsample for lv in wsi.levels] == [1.0, 4.0, 16.0]
    assert wsi.full_extract_px == extent
    assert wsi.level == level
    assert wsi.read_tile(0).shape == (256, 256, 3)


def test_grid_geometry_stride_and_edge_tiles(slide_path):
    plain = WSI(slide_path, 256, "20x", tissue=None)
    assert plain.grid.shape == (3072 // 256, 4096 // 256)
    assert plain.grid.all()
    half = WSI(slide_path, 256, "20x", tissue=None, stride_div=2)
    assert half.stride_px == 128
    assert half.grid.shape == ((3072 - 256) // 128 + 1, (4096 - 256) // 128 + 1)

    wide = WSI(slide_path, 256, 300, tissue=None)  # 600 px tiles do not divide 4096
    edge = WSI(slide_path, 256, 300, tissue=None, use_edge_tiles=True)
    assert wide.grid.shape == (5, 6)
    assert edge.grid.shape == (6, 7)
    last = int(np.flatnonzero(edge.coords[:, 0] == 3600)[0])
    tile = edge.read_tiles([last])[0]
    # Columns beyond x = 4096 (the last 104 of 600 level-0 px) are white.
    assert (tile[:, -40:] == 255).all()
    assert not (tile[:, :150] == 255).all()


@pytest.mark.parametrize(("tissue", "least_saturation"), [("otsu", 0.15), (None, 0.03)])
def test_tissue_detection_keeps_tissue_and_drops_background(slide_path, tissue, least_saturation):
    """``otsu`` keeps strongly stained tiles; the default (``hsv``) keeps pale ones too."""
    # 64 px tiles read from level 1 keep the test fast; the grid is the same as at 256 px.
    everything = WSI(slide_path, 64, 128, tissue=None)
    wsi = WSI(slide_path, 64, 128, tissue=tissue) if tissue else WSI(slide_path, 64, 128)
    assert wsi.tissue_record["name"] == (tissue or "hsv")
    assert wsi.level == 1
    assert np.array_equal(wsi.grid, WSI(slide_path, 256, 128, tissue=tissue or "hsv").grid)
    assert 0 < len(wsi) < len(everything) / 2
    assert not (wsi.grid & ~everything.grid).any()
    dropped = np.flatnonzero(~wsi.grid[everything.grid_index[:, 0], everything.grid_index[:, 1]])
    kept_sat = saturation(wsi.read_tiles(range(len(wsi)))).mean(axis=(1, 2))
    dropped_sat = saturation(everything.read_tiles(dropped)).mean(axis=(1, 2))
    assert kept_sat.min() > least_saturation
    assert np.median(dropped_sat) < 0.02
    assert wsi.tissue_mask is not None
    assert wsi.tissue_mask.shape == (192, 256)
    if tissue is None:  # the default keeps every tile Otsu keeps, and the pale rims
        otsu = WSI(slide_path, 64, 128, tissue="otsu")
        assert not (otsu.grid & ~wsi.grid).any() and len(wsi) > len(otsu)


def test_custom_tissue_detector(slide_path):
    def left_half(thumb: np.ndarray) -> np.ndarray:
        mask = np.zeros(thumb.shape[:2], dtype=bool)
        mask[:, : thumb.shape[1] // 2] = True
        return mask

    wsi = WSI(slide_path, 256, "20x", tissue=left_half)
    assert len(wsi) == 12 * 8
    assert (wsi.coords[:, 0] + 256 <= 2048).all()
    with pytest.raises(TileSettingsError, match="one bool per thumbnail pixel"):
        WSI(slide_path, 256, "20x", tissue=lambda t: np.ones((3, 3), bool))
    with pytest.raises(TileSettingsError, match="tissue must be"):
        WSI(slide_path, 256, "20x", tissue="triangle")


def test_pixel_filters_at_read_time_and_filter_tiles(slide_path):
    wsi = WSI(slide_path, 64, 128, tissue=None)
    tiles, keep = wsi.read_tiles(range(len(wsi)), return_mask=True)
    gray = grayspace_fraction(tiles, 0.05)
    np.testing.assert_array_equal(keep, gray <= 0.6)
    assert 0 < keep.sum() < len(wsi)
    removed = wsi.filter_tiles(batch_size=50)
    assert removed == int((~keep).sum())
    assert len(wsi) == int(keep.sum())
    assert wsi.grid.sum() == len(wsi)
    assert wsi.read_tiles(range(len(wsi)), return_mask=True)[1].all()

    white = WSI(slide_path, 64, 128, tissue=None, grayspace_fraction=1.0, whitespace_fraction=0.5)
    _, keep_white = white.read_tiles(range(len(white)), return_mask=True)
    assert 0 < keep_white.sum() < len(white)  # background (243 gray) counts as white


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_geojson_and_csv_rois_select_tiles_by_centre(slide_path, tmp_path):
    geojson = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"classification": {"name": "Tumor"}},
                "geometry": {"type": "Polygon", "coordinates": [_square(0, 0, 1100, 900)]},
            }
        ],
    }
    (tmp_path / "s.geojson").write_text(json.dumps(geojson))
    csv_lines = ["roi_name,x_base,y_base"] + [f"tumor,{x},{y}" for x, y in _square(0, 0, 1100, 900)]
    (tmp_path / "s.csv").write_text("\n".join(csv_lines) + "\n")
    assert load_rois(tmp_path / "s.geojson")[0].name == "Tumor"

    everything = WSI(slide_path, 256, "20x", tissue=None)
    centres = everything.coords + 128
    in_square = (centres[:, 0] < 1100) & (centres[:, 1] < 900)
    assert in_square.sum() == 4 * 4

    inside = WSI(slide_path, 256, "20x", tissue=None, roi=tmp_path / "s.geojson")
    assert inside.roi_method == "inside"
    np.testing.assert_array_equal(inside.coords, everything.coords[in_square])
    from_csv = WSI(slide_path, 256, "20x", tissue=None, roi=tmp_path / "s.csv")
    np.testing.assert_array_equal(from_csv.coords, inside.coords)
    outside = WSI(slide_path, 256, "20x", tissue=None, roi=tmp_path / "s.csv", roi_method="outside")
    np.testing.assert_array_equal(outside.coords, everything.coords[~in_square])
    ignored = WSI(slide_path, 256, "20x", tissue=None, roi=tmp_path / "s.csv", roi_method="ignore")
    np.testing.assert_array_equal(ignored.coords, everything.coords)
    with pytest.raises(TileSettingsError, match="no ROI"):
        WSI(slide_path, 256, "20x", tissue=None, roi_method="inside")


def test_multipolygon_with_hole_and_bad_roi_files(tmp_path):
    feature = {
        "type": "Feature",
        "geometry": {
            "type": "MultiPolygon",
            "coordinates": [[_square(0, 0, 100, 100), _square(40, 40, 60, 60)],
                            [_square(200, 200, 300, 300)]],
        },
    }  # fmt: skip
    path = tmp_path / "multi.json"
    path.write_text(json.dumps([feature, {"type": "Feature", "geometry": {"type": "Point"}}]))
    rois = load_rois(path)
    assert len(rois) == 2
    assert len(rois[0].holes) == 1
    points = np.array([[10, 10], [50, 50], [250, 250], [150, 150]])
    assert rois[0].contains(points).tolist() == [True, False, False, False]
    assert isinstance(rois[1], ROI)
    assert rois[1].contains(points).tolist() == [0, 0, 1, 0]

    bad = tmp_path / "bad.csv"
    bad.write_text("name,x,y\na,1,2\n")
    with pytest.raises(ROIError, match="roi_name, x_base, y_base"):
        load_rois(bad)
    with pytest.raises(ROIError, match="does not exist"):
        load_rois(tmp_path / "missing.geojson")
    (tmp_path / "broken.geojson").write_text("{not json")
    with pytest.raises(ROIError, match="not valid JSON"):
        load_rois(tmp_path / "broken.geojson")


def _read_in_worker(wsi: WSI) -> np.ndarray:
    return wsi.read_tiles([0, 1])


def test_wsi_pickles_without_its_handle_and_reads_in_workers(wsi):
    wsi.read_tile(0)  # opens the handle
    state = wsi.__getstate__()
    assert state["_reader"] is None and wsi.reader_name == "openslide"
    clone = pickle.loads(pickle.dumps(wsi))
    np.testing.assert_array_equal(clone.read_tiles([0, 1]), wsi.read_tiles([0, 1]))
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        from_worker = pool.submit(_read_in_worker, wsi).result(timeout=60)
    np.testing.assert_array_equal(from_worker, wsi.read_tiles([0, 1]))


def test_attributes_thumbnail_and_repr(wsi, slide_path):
    assert wsi.name == "sample"
    assert wsi.path == slide_path
    assert wsi.dimensions == (4096, 3072)
    assert wsi.mpp == 0.5
    assert wsi.vendor == "aperio"
    assert wsi.tile_um == "20x"
    assert wsi.tile_microns == 128.0
    assert wsi.stride_px == 256
    assert [lv.dimensions for lv in wsi.levels] == [(4096, 3072), (1024, 768), (256, 192)]
    thumb = wsi.thumbnail(width=400)
    assert thumb.mode == "RGB"
    assert thumb.size == (400, 300)
    assert f"tiles={len(wsi)}" in repr(wsi)
    assert "'sample'" in repr(wsi)
    with pytest.raises(IndexError):
        wsi.read_tiles([len(wsi)])


def test_mpp_override_and_invalid_settings(slide_path):
    coarse = WSI(slide_path, 256, 128, mpp=0.25, tissue=None)  # pretend 40x: 512 px tiles
    assert coarse.mpp == 0.25
    assert coarse.full_extract_px == 512
    for kwargs, match in [
        ({"tile_um": "twenty"}, "not a magnification"),
        ({"tile_um": -5}, "positive number"),
        ({"tile_um": 128, "roi_method": "around"}, "roi_method"),
        ({"tile_um": 128, "stride_div": 0}, "stride_div"),
        ({"tile_um": 128, "mpp": -1.0}, "mpp must be"),
    ]:
        tile_um = kwargs.pop("tile_um")
        with pytest.raises(TileSettingsError, match=match) as info:
            WSI(slide_path, 256, tile_um, tissue=None, **kwargs)
        assert isinstance(info.value, HistobagError)
