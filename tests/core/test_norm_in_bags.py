"""Stain normalizers in bag runs: slideflow's names through ``generate_feature_bags``, and bags
written by histobag 0.1 (whose ``macenko`` etc. meant other transforms) still rebuilding to the
transforms that made them."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import histobag
from histobag.bags.config import read_config
from histobag.bags.read import read_bag
from histobag.errors import RenamedNormalizerWarning
from histobag.norm import autoselect
from histobag.slide import WSI
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OLD_BAGS = FIXTURES / "histobag-0.1-bags"
SLIDEFLOW = FIXTURES / "slideflow-norm" / "norm_reference.npz"
SLIDEFLOW_NAMES = [
    "macenko",
    "macenko_fast",
    "reinhard",
    "reinhard_fast",
    "reinhard_mask",
    "reinhard_fast_mask",
    "vahadane",
]


@pytest.fixture(scope="module")
def extractor():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    return make_slides(tmp_path_factory.mktemp("normslides"), n=1)


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=pytest.mark.slow) if m == "vahadane" else m for m in SLIDEFLOW_NAMES],
)
def test_bags_hold_features_of_the_normalised_tiles(extractor, slides, tmp_path, method):
    dataset = histobag.Dataset(slides, None, TILE_PX, TILE_UM)
    report = dataset.generate_feature_bags(
        extractor, tmp_path / "bags", normalizer=method, batch_size=13, progress=False
    )
    assert not report.failed
    config = read_config(tmp_path / "bags")
    norm = autoselect(method)  # slideflow's default preset, v3 where it has one
    assert config["normalizer"] == {"method": method, "fit": norm.get_fit()}

    wsi = WSI(slides / "slide-0.svs", TILE_PX, TILE_UM)
    tiles, keep = wsi.read_tiles(range(len(wsi)), return_mask=True)
    normalised = norm.transform(torch.from_numpy(tiles[keep]).permute(0, 3, 1, 2))
    expected = torch.cat([extractor.forward_batch(t[None]) for t in normalised]).numpy()
    features, _, _ = read_bag(tmp_path / "bags", "slide-0")
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["macenko", "reinhard", "reinhard_mask", "vahadane"])
def test_bags_from_histobag_0_1_rebuild_to_the_transform_that_made_them(tmp_path, method):
    folder = tmp_path / "bags"
    folder.mkdir()
    shutil.copy(OLD_BAGS / f"{method}.bags_config.json", folder / "bags_config.json")
    with pytest.warns(RenamedNormalizerWarning, match=f"now called 'legacy_{method}'"):
        _, normalizer = histobag.rebuild_extractor(folder)
    assert normalizer.method == f"legacy_{method}"
    images = np.load(SLIDEFLOW)["images"]
    with np.load(OLD_BAGS / "old_outputs.npz") as old:
        np.testing.assert_array_equal(normalizer.transform(images), old[method])
    with pytest.warns(RenamedNormalizerWarning):  # a resume compares against the old transform
        assert read_config(folder)["normalizer"]["method"] == f"legacy_{method}"


def test_a_config_written_since_0_2_keeps_slideflows_meaning(tmp_path):
    config = json.loads((OLD_BAGS / "macenko.bags_config.json").read_text())
    config["provenance"]["versions"]["histobag"] = "0.2.0"
    config["normalizer"] = {"method": "macenko", "fit": autoselect("macenko").get_fit()}
    (tmp_path / "bags_config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RenamedNormalizerWarning)
        _, normalizer = histobag.rebuild_extractor(tmp_path)
    assert normalizer.method == "macenko"
    images = np.load(SLIDEFLOW)["images"]
    np.testing.assert_array_equal(normalizer.transform(images), autoselect("macenko")(images))
