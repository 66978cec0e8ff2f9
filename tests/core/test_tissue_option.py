"""Tissue detection is selectable on a dataset, a project and the command line, and recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

import histobag
from histobag.bags.config import fingerprint, read_config
from histobag.bags.read import read_bag
from histobag.cli import main
from histobag.errors import ArgumentError, ConfigError
from histobag.project import Project
from histobag.slide import WSI
from histobag.slide.tissue import tissue_record
from histobag.slide.tissue_hsv import build_hsv
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered

RUN = {"num_workers": 0, "progress": False}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return make_slides(tmp_path_factory.mktemp("tissue-slides"), n=2)


@pytest.fixture(scope="module")
def extractor():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


def kept_tiles(slide, tissue):
    """Grid tiles of ``slide`` that pass the pixel filters, built with WSI by hand."""
    wsi = WSI(slide, TILE_PX, TILE_UM, tissue=tissue)
    _, kept = wsi.read_tiles(np.arange(len(wsi)), return_mask=True)
    return wsi.coords[kept]


def test_dataset_without_tissue_detection_keeps_every_tile_the_pixel_filters_pass(
    extractor, slides, tmp_path
):
    for tissue, folder in (("otsu", "otsu"), (None, "none")):
        dataset = histobag.Dataset(slides, None, TILE_PX, TILE_UM, tissue=tissue)
        report = dataset.generate_feature_bags(extractor, tmp_path / folder, **RUN)
        assert report.ok
        assert read_config(tmp_path / folder)["tissue"] == tissue_record(tissue)
        for slide in ("slide-0", "slide-1"):
            _, coords, convention = read_bag(tmp_path / folder, slide)
            assert convention == "centre"
            expected = (
                kept_tiles(slides / f"{slide}.svs", tissue)
                + dataset.wsi(slide).full_extract_px // 2
            )
            assert {tuple(c) for c in coords} == {tuple(c) for c in expected}
    # Otsu keeps a subset of what no detection keeps, and here strictly fewer (white margins).
    otsu = {tuple(c) for c in read_bag(tmp_path / "otsu", "slide-0")[1]}
    everything = {tuple(c) for c in read_bag(tmp_path / "none", "slide-0")[1]}
    assert otsu < everything


def test_project_dataset_and_cli_take_tissue_none(extractor, slides, tmp_path):
    project = Project.create(tmp_path / "project", slides=slides)
    dataset = project.dataset(TILE_PX, TILE_UM, tissue=None)
    assert dataset.tissue is None and dataset.wsi("slide-0").tissue_mask is None
    report = project.generate_feature_bags(extractor, dataset, **RUN)
    assert report.outdir.name.endswith("no-tissue-detection")
    code = main(  # pixelnet stays registered by the extractor fixture
        ["extract", "--extractor", "pixelnet", "--slides", str(slides), "--tile-px",
         str(TILE_PX), "--tile-um", str(TILE_UM), "--outdir", str(tmp_path / "cli"),
         "--workers", "0", "--no-progress", "--tissue", "none"]
    )  # fmt: skip
    assert code == 0
    assert read_config(tmp_path / "cli")["tissue"] is None
    for slide in ("slide-0", "slide-1"):
        np.testing.assert_array_equal(
            read_bag(tmp_path / "cli", slide)[0], read_bag(report.outdir, slide)[0]
        )


def test_a_resume_with_other_tissue_detection_is_refused(extractor, slides, tmp_path):
    histobag.Dataset(slides, None, TILE_PX, TILE_UM).generate_feature_bags(
        extractor, tmp_path, **RUN
    )
    without = histobag.Dataset(slides, None, TILE_PX, TILE_UM, tissue=None)
    with pytest.raises(ConfigError, match="tissue"):
        without.generate_feature_bags(extractor, tmp_path, **RUN)


def test_the_default_detector_is_hsv_recorded_with_every_parameter(extractor, slides, tmp_path):
    report = histobag.Dataset(slides, None, TILE_PX, TILE_UM).generate_feature_bags(
        extractor, tmp_path, **RUN
    )
    assert report.ok
    recorded = read_config(tmp_path)["tissue"]
    assert recorded["name"] == "hsv"
    assert recorded["kwargs"] == build_hsv().to_dict()
    # The bags hold exactly the tiles WSI keeps with the hsv detector.
    for slide in ("slide-0", "slide-1"):
        coords = read_bag(tmp_path, slide)[1]
        wsi = WSI(slides / f"{slide}.svs", TILE_PX, TILE_UM, tissue="hsv")
        expected = kept_tiles(slides / f"{slide}.svs", "hsv") + wsi.full_extract_px // 2
        assert len(coords) > 0
        assert {tuple(c) for c in coords} == {tuple(c) for c in expected}


def test_a_config_from_before_the_option_means_otsu(extractor, slides, tmp_path):
    otsu = histobag.Dataset(slides, None, TILE_PX, TILE_UM, tissue="otsu")
    otsu.generate_feature_bags(extractor, tmp_path, **RUN)
    config = read_config(tmp_path)
    old = {k: v for k, v in config.items() if k != "tissue"}
    assert fingerprint(old) == fingerprint(config)
    assert fingerprint({**old, "tissue": "otsu"}) == fingerprint(config)  # a bare name
    assert fingerprint({**old, "tissue": None}) != fingerprint(config)
    (tmp_path / "bags_config.json").write_text(json.dumps(old))
    # Resuming them needs Otsu named now that hsv is the default; the refusal says so.
    default = histobag.Dataset(slides, None, TILE_PX, TILE_UM)
    with pytest.raises(ConfigError, match=r"tissue='otsu' \(--tissue otsu\)"):
        default.generate_feature_bags(extractor, tmp_path, **RUN)
    report = otsu.generate_feature_bags(extractor, tmp_path, **RUN)
    assert report.ok and sorted(report.skipped) == ["slide-0", "slide-1"]


def test_a_project_resumes_otsu_bags_made_when_otsu_was_the_default(extractor, slides, tmp_path):
    project = Project.create(tmp_path / "project", slides=slides)
    otsu = project.dataset(TILE_PX, TILE_UM, tissue="otsu")
    first = project.generate_feature_bags(extractor, otsu, **RUN)
    assert first.outdir.name.endswith("tissue-otsu")
    # Make it look like a folder of the old default: no suffix, no tissue record.
    legacy = first.outdir.with_name(first.outdir.name.removesuffix("_tissue-otsu"))
    first.outdir.rename(legacy)
    config = json.loads((legacy / "bags_config.json").read_text())
    del config["tissue"]
    (legacy / "bags_config.json").write_text(json.dumps(config))
    again = project.generate_feature_bags(extractor, otsu, **RUN)
    assert again.outdir == legacy
    assert sorted(again.skipped) == ["slide-0", "slide-1"]
    # The default (hsv) does not mix into that folder, and says how to add to it.
    with pytest.raises(ConfigError, match="made with the 'otsu' tissue detector"):
        project.generate_feature_bags(extractor, project.dataset(TILE_PX, TILE_UM), **RUN)


def test_an_unknown_tissue_detector_is_refused_with_the_choices(slides):
    with pytest.raises(ArgumentError, match="otsu"):
        histobag.Dataset(slides, None, TILE_PX, TILE_UM, tissue="magic")
