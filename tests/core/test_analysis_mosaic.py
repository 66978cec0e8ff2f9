"""Mosaic grid assignment (strict and expanded), tile sources and rendering, without UMAP."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histobag.analysis import Mosaic, SlideMap
from histobag.analysis.mosaic_grid import assign_grid
from histobag.analysis.tiles import ArrayTileSource, SlideTileSource, TFRecordTileSource
from histobag.errors import HistobagError
from histobag.slide import WSI
from tests.core.bag_helpers import TILE_PX, TILE_UM, make_slides


def _points(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    # clusters of very different density, so some cells are crowded and many are empty
    centres = rng.uniform(-10, 10, size=(6, 2))
    xy = centres[rng.integers(0, 6, n)] + rng.normal(scale=rng.uniform(0.2, 2, (n, 1)), size=(n, 2))
    return xy, rng.normal(size=(n, 8)).astype(np.float32)


def _check_strict(xy, grid):
    assert len(set(grid.points.tolist())) == len(grid.points)  # no tile used twice
    assert len({tuple(c) for c in grid.cells.tolist()}) == len(grid.cells)  # one tile per cell
    inside = grid.cell_of(xy[grid.points])
    assert np.array_equal(inside, grid.cells)  # each tile lies within its cell
    # every cell holding any point is filled
    occupied = {tuple(c) for c in grid.cell_of(xy).tolist()}
    assert occupied == {tuple(c) for c in grid.cells.tolist()}


@pytest.mark.parametrize("tile_select", ["first", "nearest", "centroid"])
def test_strict_mode_puts_a_cell_own_tile_in_it(tile_select):
    xy, features = _points()
    grid = assign_grid(xy, 30, tile_select=tile_select, features=features)
    _check_strict(xy, grid)
    assert not grid.expanded.any()
    cell_of = grid.cell_of(xy)
    for (col, row), point in list(zip(grid.cells, grid.points))[:50]:
        members = np.flatnonzero((cell_of[:, 0] == col) & (cell_of[:, 1] == row))
        if tile_select == "first":
            assert point == members.min()
        elif tile_select == "nearest":
            d = ((xy[members] - grid.cell_centres(np.array([[col, row]]))) ** 2).sum(axis=1)
            assert point == members[np.argmin(d)]
        else:
            mean = features[members].mean(axis=0)
            d = ((features[members] - mean) ** 2).sum(axis=1)
            # (two-tile cells tie exactly: both are as near their midpoint)
            assert d[members == point][0] == pytest.approx(d.min(), rel=1e-5)


def test_grid_shape_follows_the_map_aspect():
    xy = np.array([[0, 0], [10, 0], [0, 5], [10, 5.0]])
    grid = assign_grid(xy, 10)
    assert (grid.num_x, grid.num_y) == (10, 5)
    assert grid.cell_size == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("leniency", [0.75, 1.5, 3.0])
def test_expanded_mode_fills_empty_cells_with_nearby_unused_tiles(leniency):
    xy, _ = _points()
    strict = assign_grid(xy, 30)
    grid = assign_grid(xy, 30, expanded=True, leniency=leniency)
    assert len(set(grid.points.tolist())) == len(grid.points)  # no tile used twice
    assert len({tuple(c) for c in grid.cells.tolist()}) == len(grid.cells)
    own = ~grid.expanded
    # the strict part is unchanged; the rest are cells that had no point of their own
    assert np.array_equal(grid.points[own], strict.points)
    assert grid.expanded.sum() > 0
    extra_cells = {tuple(c) for c in grid.cells[grid.expanded].tolist()}
    assert not extra_cells & {tuple(c) for c in strict.cells.tolist()}
    distance = np.linalg.norm(
        xy[grid.points[grid.expanded]] - grid.cell_centres(grid.cells[grid.expanded]), axis=1
    )
    assert (distance <= leniency * grid.cell_size + 1e-9).all()
    # more leniency never fills fewer cells
    wider = assign_grid(xy, 30, expanded=True, leniency=leniency * 2)
    assert len(wider) >= len(grid)


def test_bad_arguments_are_refused():
    with pytest.raises(HistobagError, match="tile_select"):
        assign_grid(np.zeros((3, 2)), 5, tile_select="best")
    with pytest.raises(HistobagError, match="features"):
        assign_grid(np.zeros((3, 2)), 5, tile_select="centroid")
    assert len(assign_grid(np.zeros((0, 2)), 5)) == 0


def _map(n=400, seed=1, labels=True):
    rng = np.random.default_rng(seed)
    data = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "y": rng.normal(size=n),
            "slide": np.where(np.arange(n) % 2, "a", "b"),
            "loc_x": np.arange(n) * 10,
            "loc_y": np.zeros(n, int),
            "tile": np.arange(n),
        }
    )
    smap = SlideMap(data, features=rng.normal(size=(n, 4)).astype(np.float32))
    if labels:
        smap.label_by_slide({"a": "tumor", "b": "normal"})
    return smap


def test_mosaic_renders_each_assigned_tile_once(tmp_path):
    smap = _map()
    tiles = {}
    for i, row in smap.data.iterrows():  # each tile a distinct flat colour
        colour = np.array([i % 256, (i * 7) % 256, (i * 13) % 256], np.uint8)
        tiles[(row["slide"], row["loc_x"], row["loc_y"])] = np.broadcast_to(colour, (16, 16, 3))
    mosaic = Mosaic(smap, ArrayTileSource(tiles), num_tiles_x=12, expanded=True, borders=False)
    canvas = mosaic.render()
    px = canvas.shape[1] // mosaic.num_tiles_x
    assert canvas.shape[0] == mosaic.num_tiles_y * px
    for (col, row), point in zip(mosaic.grid.cells, mosaic.grid.points):
        top = (mosaic.num_tiles_y - 1 - row) * px
        cell = canvas[top : top + px, col * px : (col + 1) * px]
        assert (cell == tiles[tuple(smap.data.loc[point, ["slide", "loc_x", "loc_y"]])][0, 0]).all()
    table = mosaic.points_table()
    assert len(table) == len(mosaic.grid) and table["point"].is_unique
    path = mosaic.save(tmp_path / "mosaic.png")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] == 800 and image.std() > 20


def test_mosaic_without_images_and_with_missing_tiles(tmp_path):
    smap = _map()
    mosaic = Mosaic(smap, ArrayTileSource({}), num_tiles_x=8, resolution="medium")
    path = mosaic.save(tmp_path / "empty.png")
    assert len(mosaic.missing) == len(mosaic.grid)
    assert Image.open(path).size[0] == 1800
    grid_only = Mosaic(smap, None, num_tiles_x=8)
    fig = grid_only.plot()
    assert grid_only.legend_labels == ["normal", "tumor"]
    assert fig.get_size_inches()[0] == 8
    with pytest.raises(HistobagError, match="resolution"):
        Mosaic(smap, None, resolution="ultra")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return make_slides(tmp_path_factory.mktemp("mosaicslides"), n=1) / "slide-0.svs"


def test_tile_sources_read_the_right_tiles(slide, tmp_path):
    wsi = WSI(slide, TILE_PX, TILE_UM)
    wsi.filter_tiles()  # tiles the pixel filters drop are not in the TFRecord
    x, y = (int(v) for v in wsi.coords[5])
    expected = wsi.read_tile_at(x, y)
    extent = wsi.full_extract_px
    from_slide = SlideTileSource({"slide-0": slide}, TILE_PX, TILE_UM)
    assert np.array_equal(from_slide.read("slide-0", x, y), expected)
    centred = SlideTileSource({"slide-0": slide}, TILE_PX, TILE_UM, coordinates="centre")
    assert np.array_equal(centred.read("slide-0", x + extent // 2, y + extent // 2), expected)
    assert from_slide.read("other", x, y) is None

    record = wsi.extract_tiles(tmp_path, img_format="png", progress=False)
    tfr = TFRecordTileSource({"slide-0": record})
    assert np.array_equal(tfr.read("slide-0", x, y), expected)
    tfr_centre = TFRecordTileSource({"slide-0": record}, coordinates="centre")
    assert np.array_equal(tfr_centre.read("slide-0", x + extent // 2, y + extent // 2), expected)
    assert tfr.read("slide-0", -10_000, -10_000) is None
