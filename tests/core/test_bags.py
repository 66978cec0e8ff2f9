"""Feature bags: one engine for every path, writers, config, resume and failures."""

import json

import h5py
import numpy as np
import pytest
import torch

import histobag
from histobag.analysis import DatasetFeatures
from histobag.bags.read import read_bag
from histobag.errors import ConfigError, EmptyRunWarning
from histobag.files import TMP_PREFIX
from histobag.slide import WSI
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return make_slides(tmp_path_factory.mktemp("bagslides"), n=2)


@pytest.fixture
def extractor():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


def _dataset(folder, **kw):
    return histobag.Dataset(folder, tile_px=TILE_PX, tile_um=TILE_UM, **kw)


def test_wsi_call_bags_and_dataset_features_agree(slides, extractor, tmp_path):
    wsi = WSI(slides / "slide-0.svs", TILE_PX, TILE_UM)
    grid = extractor(wsi, batch_size=8, num_workers=0)
    assert grid.shape[:2] == wsi.grid.shape and grid.shape[2] == 12
    kept = ~grid.mask[..., 0]
    assert kept.sum() > 20
    # masked positions are exactly the background (or pixel-filtered) tiles
    assert not (kept & ~wsi.grid).any()

    ds = _dataset(slides)
    report = ds.generate_feature_bags(
        extractor, tmp_path / "bags", batch_size=8, num_workers=1, progress=False
    )
    assert report.ok and set(report.done) == {"slide-0", "slide-1"}
    bag = torch.load(tmp_path / "bags" / "slide-0.pt", weights_only=True)
    centres = np.load(tmp_path / "bags" / "slide-0.index.npz")["arr_0"]

    rows, cols = np.nonzero(kept)
    from_grid = grid.data[rows, cols]
    top_left = np.stack([wsi.grid_x[cols], wsi.grid_y[rows]], axis=1)
    assert np.array_equal(bag.numpy(), from_grid)
    assert np.array_equal(centres, top_left + wsi.full_extract_px // 2)

    dsf = DatasetFeatures(extractor, ds, batch_size=8, num_workers=0)
    assert np.array_equal(dsf.activations["slide-0"], from_grid)
    assert np.array_equal(dsf.locations["slide-0"], top_left)
    dsf.to_torch(tmp_path / "bags2")
    for name in ("slide-0.pt", "slide-1.pt"):
        a = torch.load(tmp_path / "bags" / name, weights_only=True)
        b = torch.load(tmp_path / "bags2" / name, weights_only=True)
        assert torch.equal(a, b)
    assert (
        json.loads((tmp_path / "bags2" / "bags_config.json").read_text())["extractor"]
        == json.loads((tmp_path / "bags" / "bags_config.json").read_text())["extractor"]
    )


def test_writers_store_the_documented_layouts(slides, extractor, tmp_path):
    ds = _dataset(slides)
    out = {}
    for writer in ("pt", "h5", "safetensors"):
        ds.generate_feature_bags(
            extractor, tmp_path / writer, writer=writer, progress=False, num_workers=0
        )
        out[writer] = read_bag(tmp_path / writer, "slide-1")
    features_pt, centres, convention = out["pt"]
    assert convention == "centre"
    for writer in ("h5", "safetensors"):
        features, top_left, convention = out[writer]
        assert convention == "top_left"
        assert np.array_equal(features, features_pt)
        extent = WSI(slides / "slide-1.svs", TILE_PX, TILE_UM).full_extract_px
        assert np.array_equal(top_left + extent // 2, centres)
    with h5py.File(tmp_path / "h5" / "slide-1.h5") as h5:
        assert h5["features"].shape == features_pt.shape
        assert h5["coords"].attrs["patch_size"] == extent
        assert h5["coords"].attrs["mpp"] == pytest.approx(0.5)
        assert h5["coords"].attrs["patch_level"] == 0


def test_config_records_provenance_and_rebuilds(slides, extractor, tmp_path):
    ds = _dataset(slides)
    ds.generate_feature_bags(
        extractor, tmp_path, normalizer="reinhard", progress=False, num_workers=0
    )
    config = json.loads((tmp_path / "bags_config.json").read_text())
    assert config["extractor"] == {"extractor": "pixelnet", "kwargs": {"mixed_precision": False}}
    assert config["normalizer"]["method"] == "reinhard" and config["normalizer"]["fit"]
    assert config["num_features"] == 12 and config["tile_px"] == TILE_PX
    assert config["tile_um"] == TILE_UM and config["writer"] == "pt"
    assert config["coordinates"] == "centre"
    prov = config["provenance"]
    assert prov["precision"] == "float32"
    assert prov["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert prov["versions"]["histobag"] == histobag.__version__
    assert prov["versions"]["torch"] == torch.__version__.split("+")[0] or prov["versions"][
        "torch"
    ].startswith(torch.__version__.split("+")[0])
    rebuilt, normalizer = histobag.rebuild_extractor(tmp_path)
    assert rebuilt.dump_config() == extractor.dump_config()
    assert normalizer.method == "reinhard" and normalizer.get_fit() == config["normalizer"]["fit"]


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda c: c["extractor"].update(extractor="os:system"), "No installed extractor"),
        (lambda c: c["extractor"].update(kwargs={"weights": {"__class__": ["x"]}}), "refuses"),
        (lambda c: c.update(extractor="pixelnet"), "'extractor' must be"),
        (lambda c: c["normalizer"].update(method="histobag.norm:evil"), "unknown stain"),
    ],
)
def test_tampered_config_is_refused(slides, extractor, tmp_path, tamper, message):
    _dataset(slides).generate_feature_bags(
        extractor, tmp_path, normalizer="macenko", progress=False, num_workers=0
    )
    config = json.loads((tmp_path / "bags_config.json").read_text())
    tamper(config)
    (tmp_path / "bags_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        histobag.rebuild_extractor(tmp_path / "bags_config.json")


def test_resume_skips_done_and_refuses_other_configs(slides, extractor, tmp_path):
    ds = _dataset(slides)
    first = ds.generate_feature_bags(extractor, tmp_path, progress=False, num_workers=0)
    mtime = (tmp_path / "slide-0.pt").stat().st_mtime_ns
    (tmp_path / "slide-1.pt").unlink()  # as if interrupted before slide-1 finished
    second = ds.generate_feature_bags(extractor, tmp_path, progress=False, num_workers=0)
    assert set(second.skipped) == {"slide-0"} and set(second.done) == {"slide-1"}
    assert (tmp_path / "slide-0.pt").stat().st_mtime_ns == mtime
    assert second.done["slide-1"] == first.done["slide-1"]

    with pytest.raises(ConfigError, match="different configuration") as err:
        ds.generate_feature_bags(extractor, tmp_path, normalizer="macenko", progress=False)
    assert "normalizer" in str(err.value) and "overwrite=True" in str(err.value)
    third = ds.generate_feature_bags(
        extractor, tmp_path, normalizer="macenko", overwrite=True, progress=False, num_workers=0
    )
    assert set(third.done) == {"slide-0", "slide-1"}
    config = json.loads((tmp_path / "bags_config.json").read_text())
    assert config["normalizer"]["method"] == "macenko"


def test_min_and_max_tiles(slides, extractor, tmp_path):
    ds = _dataset(slides)
    report = ds.generate_feature_bags(
        extractor, tmp_path / "max", max_tiles=10, progress=False, num_workers=0
    )
    assert all(n <= 10 for n in report.done.values())
    features, _, _ = read_bag(tmp_path / "max", "slide-0")
    assert features.shape == (report.done["slide-0"], 12)
    with pytest.warns(EmptyRunWarning, match="No bag was written"):
        report = ds.generate_feature_bags(
            extractor, tmp_path / "min", min_tiles=10_000, progress=False, num_workers=0
        )
    assert not report.done
    assert all("min_tiles=10000" in reason for reason in report.failed.values())
    assert not list((tmp_path / "min").glob("*.pt"))


def test_unsafe_slide_names_are_sanitised(tmp_path, extractor):
    folder = make_slides(tmp_path / "slides", n=1)
    (folder / "slide-0.svs").rename(folder / "case 7;rm -rf.svs")
    report = _dataset(folder).generate_feature_bags(
        extractor, tmp_path / "bags", progress=False, num_workers=0
    )
    (name,) = report.done
    assert (tmp_path / "bags" / f"{name}.pt").is_file()
    assert " " not in name and ";" not in name and "/" not in name


def test_a_pack_can_add_a_bag_writer(slides, extractor, tmp_path):
    class Plugin:
        @histobag.hookimpl
        def histobag_bag_writers(self):
            return [histobag.BagWriterSpec("test-npz", "tests.core.bag_helpers:NpzWriter")]

    plugin = histobag.register_plugin(Plugin())
    try:
        report = _dataset(slides).generate_feature_bags(
            extractor, tmp_path, writer="test-npz", progress=False, num_workers=0
        )
        assert report.ok
        features, _, _ = read_bag(tmp_path, "slide-0")
        assert features.shape == (report.done["slide-0"], 12)
    finally:
        histobag.unregister_plugin(plugin)


def test_no_temporary_files_left_behind(slides, extractor, tmp_path):
    _dataset(slides).generate_feature_bags(extractor, tmp_path, progress=False, num_workers=1)
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))
