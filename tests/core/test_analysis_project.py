"""A small labelled project end to end: bags → DatasetFeatures → UMAP, 3-D plot, box plots,
mosaic (from slides and TFRecords), project methods, CLI and the demo's analysis."""

import argparse

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import histobag
from histobag.analysis import DatasetFeatures, Mosaic, SlideMap
from histobag.analysis import cli as analysis_cli
from histobag.analysis.project_methods import generate_features, generate_mosaic
from histobag.analysis.slidemap import umap_embedding
from histobag.analysis.tiles import SlideTileSource, TFRecordTileSource, tile_source_for
from histobag.bags.read import read_bag
from histobag.demo import demo_analysis
from histobag.extractors.saved import save_model
from histobag.slide import WSI
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered

LABELS = {"slide-0": "tumor", "slide-1": "normal", "slide-2": "tumor", "slide-3": "normal"}
UMAP_FAST = {"n_epochs": 20, "n_neighbors": 15}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis_project")
    slides = make_slides(root / "slides", n=4)
    annotations = root / "annotations.csv"
    annotations.write_text("slide,label\n" + "".join(f"{s},{v}\n" for s, v in LABELS.items()))
    return histobag.Project.create(root / "project", slides=slides, annotations=annotations)


@pytest.fixture(scope="module")
def bags(project):
    with registered(PIXELNET):
        extractor = histobag.build_feature_extractor(
            "pixelnet", device="cpu", mixed_precision=False
        )
        dataset = project.dataset(TILE_PX, TILE_UM)
        report = project.generate_feature_bags(
            extractor, dataset, num_workers=0, progress=False, max_tiles=120
        )
    assert report.ok
    return report.outdir


@pytest.fixture(scope="module")
def features(project, bags):
    return DatasetFeatures.from_bags(bags, annotations=project.dataset(16, 8).labels("label"))


@pytest.fixture(scope="module")
def slide_map(features, tmp_path_factory):
    cache = tmp_path_factory.mktemp("umap") / "cache.npz"
    return SlideMap.from_features(features, umap_cache=cache, **UMAP_FAST), cache


def _picture(path, min_size=300):
    image = np.asarray(Image.open(path).convert("RGB"))
    assert min(image.shape[:2]) >= min_size
    assert image.std() > 15, f"{path} looks blank"
    return image


def test_from_bags_reads_what_the_bags_hold(features, bags):
    assert features.slides == sorted(LABELS)
    assert features.labels == LABELS
    assert features.coordinates == "centre"  # pt bags store slideflow's tile centres
    assert (features.tile_px, features.tile_um) == (TILE_PX, TILE_UM)
    feats, coords, _ = read_bag(bags, "slide-2")
    assert np.array_equal(features.activations["slide-2"], feats)
    assert np.array_equal(features.locations["slide-2"], coords)
    assert features.num_features == 12 and features.extractor is None


def test_umap_plot_3d_plot_and_coordinates(slide_map, features, tmp_path, monkeypatch):
    smap, cache = slide_map
    assert len(smap) == features.num_tiles
    assert set(smap.data["label"]) == {"tumor", "normal"}
    path = smap.save(tmp_path / "umap.png", title="label")
    _picture(path)
    assert smap.legend_labels == ["normal", "tumor"]
    _picture(smap.save_3d_plot(tmp_path / "3d.png", feature=4))
    assert smap.plot_3d(4).axes[0].get_zlabel() == "feature 4"

    # the cache is reused for the same input (UMAP is not run again) ...
    import umap

    def refuse(*args, **kwargs):
        raise AssertionError("UMAP ran although the cache matches")

    monkeypatch.setattr(umap, "UMAP", refuse)
    again = SlideMap.from_features(features, umap_cache=cache, **UMAP_FAST)
    np.testing.assert_array_equal(again.data[["x", "y"]], smap.data[["x", "y"]])
    # ... and not for another input
    other = pytest.warns(UserWarning, match="other features")
    with pytest.raises(AssertionError, match="UMAP ran"), other:
        umap_embedding(features.activations["slide-0"], umap_cache=cache, **UMAP_FAST)

    for suffix in ("npz", "parquet"):
        saved = smap.save_coords(tmp_path / f"coords.{suffix}")
        loaded = SlideMap.load(saved)
        np.testing.assert_array_equal(loaded.data[["x", "y"]], smap.data[["x", "y"]])
        assert list(loaded.data["slide"]) == list(smap.data["slide"])
        assert list(loaded.data["label"]) == list(smap.data["label"])
        assert loaded.coordinates == "centre" and loaded.tile_px == TILE_PX
    with pytest.raises(histobag.HistobagError):
        SlideMap.load(tmp_path / "umap.png")


@pytest.mark.parametrize("map_slide", ["centroid", "average"])
def test_one_point_per_slide(features, map_slide):
    smap = SlideMap.from_features(features, map_slide, **UMAP_FAST)
    assert sorted(smap.data["slide"]) == sorted(LABELS)
    for _, row in smap.data.iterrows():  # each point shows a real tile of its slide
        assert (features.locations[row["slide"]] == [row["loc_x"], row["loc_y"]]).all(1).any()
    if map_slide == "average":
        np.testing.assert_allclose(
            smap.features[0], features.activations[smap.data["slide"][0]].mean(axis=0), rtol=1e-5
        )


def test_box_plots_of_the_project(features, tmp_path):
    tile_df, slide_df = features.stats(tmp_path, test="kruskal")
    assert len(tile_df) == len(slide_df) == 12
    paths = features.box_plots(list(slide_df["feature"][:2]), tmp_path)
    assert len(paths) == 2
    for path in paths:
        _picture(path)


def test_mosaic_from_slides_shows_the_mapped_tiles(slide_map, features, project, tmp_path):
    smap, _ = slide_map
    dataset = project.dataset(TILE_PX, TILE_UM)
    source = tile_source_for(dataset, coordinates=features.coordinates)
    assert isinstance(source, SlideTileSource)
    mosaic = Mosaic(smap, source, num_tiles_x=12, expanded=True, borders=False)
    canvas = mosaic.render()
    assert not mosaic.missing
    px = canvas.shape[1] // mosaic.num_tiles_x
    (col, row), point = mosaic.grid.cells[0], mosaic.grid.points[0]
    info = smap.data.iloc[point]
    wsi = WSI(dataset.slide_paths()[dataset.slides().index(info["slide"])], TILE_PX, TILE_UM)
    half = wsi.full_extract_px // 2
    tile = wsi.read_tile_at(info["loc_x"] - half, info["loc_y"] - half)
    expected = np.asarray(Image.fromarray(tile).resize((px, px), Image.Resampling.BOX))
    top = (mosaic.num_tiles_y - 1 - row) * px
    assert np.array_equal(canvas[top : top + px, col * px : (col + 1) * px], expected)
    framed = Mosaic(smap, source, num_tiles_x=12)
    _picture(framed.save(tmp_path / "mosaic.png"), min_size=500)
    assert framed.legend_labels == ["normal", "tumor"]


def test_mosaic_from_tfrecords(slide_map, features, project, tmp_path):
    smap, _ = slide_map
    dataset = project.dataset(TILE_PX, TILE_UM)
    summary = dataset.extract_tiles(progress=False)
    assert not summary.failed
    source = tile_source_for(dataset, coordinates=features.coordinates)
    assert isinstance(source, TFRecordTileSource)
    mosaic = Mosaic(smap, source, num_tiles_x=10)
    from_records = mosaic.render()
    from_slides = Mosaic(
        smap, tile_source_for(dataset, coordinates="centre", prefer="slides"), num_tiles_x=10
    ).render()
    assert not mosaic.missing
    # TFRecord tiles are lossy JPEGs of the same pixels
    assert np.abs(from_records.astype(int) - from_slides.astype(int)).mean() < 8


def test_generate_mosaic_and_cli(project, bags, features, tmp_path, capsys):
    mosaic = generate_mosaic(
        project, features, outcomes="label", num_tiles_x=8, max_tiles=50, **UMAP_FAST
    )
    assert len(mosaic.slide_map) == 4 * 50
    _picture(mosaic.save(tmp_path / "m.png"))
    only_tumor = generate_mosaic(
        project, str(bags), filters={"label": ["tumor"]}, num_tiles_x=6, **UMAP_FAST
    )
    assert set(only_tumor.slide_map.data["slide"]) == {"slide-0", "slide-2"}

    parser = argparse.ArgumentParser()
    analysis_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    annotations = str(project.annotations)
    common = ["--bags", str(bags), "--n-epochs", "20", "--n-neighbors", "15"]
    for argv in (
        ["umap", *common, "--label", "label", "--annotations", annotations,
         "--out", str(tmp_path / "cli_umap.png"), "--coords", str(tmp_path / "c.parquet")],
        ["mosaic", *common, "--project", str(project.root), "--label", "label",
         "--out", str(tmp_path / "cli_mosaic.png"), "--num-tiles-x", "10", "--expanded"],
        ["stats", "--bags", str(bags), "--annotations", annotations, "--outcome", "label",
         "--outdir", str(tmp_path / "stats"), "--box-plots", "2"],
    ):  # fmt: skip
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "UMAP of" in out and "mosaic 10x" in out and "2 box plots" in out
    _picture(tmp_path / "cli_umap.png")
    _picture(tmp_path / "cli_mosaic.png")
    assert (tmp_path / "stats" / "slide_stats.csv").is_file()
    assert len(list((tmp_path / "stats" / "box_plots").glob("*.png"))) == 2


def test_demo_analysis(project, bags, tmp_path):
    paths = demo_analysis(project, bags, tmp_path / "demo", num_tiles_x=10)
    names = [p.name for p in paths]
    assert names[:4] == ["umap.png", "mosaic.png", "slide_stats.csv", "tile_stats.csv"]
    assert names[4].startswith("box_plot_")
    for path in paths:
        assert path.is_file()
        if path.suffix == ".png":
            _picture(path)


def test_trained_model_features_predictions_and_axes(project, tmp_path):
    torch.manual_seed(0)
    network = timm.create_model("test_resnet", num_classes=2)
    model = save_model(
        network,
        tmp_path / "model",
        arch="test_resnet",
        tile_px=TILE_PX,
        tile_um=TILE_UM,
        outcome_labels=["normal", "tumor"],
    )
    dsf = generate_features(project, str(model), outcomes="label", num_workers=0, max_tiles=40)
    assert set(dsf.logits) == set(LABELS) and dsf.labels == LABELS
    assert set(dsf.logits_predict().values()) <= {"normal", "tumor"}
    mosaic = generate_mosaic(
        project,
        dsf,
        predict_on_axes=(0, 1),
        show_prediction="tumor",
        restrict_pred=[0, 1],
        num_tiles_x=6,
    )
    smap = mosaic.slide_map
    logits = np.concatenate([dsf.logits[s] for s in dsf.slides])
    np.testing.assert_allclose(smap.data[["x", "y"]].to_numpy(), logits[:, [0, 1]], rtol=1e-6)
    np.testing.assert_allclose(smap.data["label"], logits[:, 1], rtol=1e-6)
    fig = smap.plot()
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    _picture(mosaic.save(tmp_path / "pred_mosaic.png"))
    with pytest.raises(histobag.HistobagError, match="dataset"):
        generate_features(project, "pixelnet")
