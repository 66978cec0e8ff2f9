"""``histobag extract --device`` and ``--roi``: the CLI reaches what the Python API offers."""

from __future__ import annotations

import numpy as np
import pytest

import histobag
from histobag.bags.read import read_bag
from histobag.cli import main
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return make_slides(tmp_path_factory.mktemp("device-roi-slides"), n=2)


@pytest.fixture
def pixelnet():
    with registered(PIXELNET):
        yield


def _extract(slides, outdir, *extra):
    args = ["extract", "--extractor", "pixelnet", "--slides", str(slides), "--tile-px"]
    args += [str(TILE_PX), "--tile-um", str(TILE_UM), "--outdir", str(outdir)]
    return main([*args, "--workers", "0", "--no-progress", *extra])


def test_roi_folder_restricts_the_bags_like_the_dataset_does(pixelnet, slides, tmp_path):
    rois = tmp_path / "rois"
    rois.mkdir()
    # A square in slide-0's top-left quarter; slide-1 has no ROI file and keeps all its tissue.
    (rois / "slide-0.csv").write_text(
        "roi_name,x_base,y_base\nr,0,0\nr,384,0\nr,384,256\nr,0,256\n"
    )
    assert _extract(slides, tmp_path / "cli", "--roi", str(rois)) == 0
    dataset = histobag.Dataset(slides, None, TILE_PX, TILE_UM, roi=rois)
    extractor = histobag.build_feature_extractor("pixelnet", device="cpu")
    reference = dataset.generate_feature_bags(
        extractor, tmp_path / "api", num_workers=0, progress=False
    )
    unrestricted = histobag.Dataset(slides, None, TILE_PX, TILE_UM).wsi("slide-0")
    for slide in ("slide-0", "slide-1"):
        features, coords, _ = read_bag(tmp_path / "cli", slide)
        expected, expected_coords, _ = read_bag(reference.outdir, slide)
        np.testing.assert_array_equal(coords, expected_coords)
        np.testing.assert_array_equal(features, expected)
    assert 0 < len(read_bag(tmp_path / "cli", "slide-0")[1]) < len(unrestricted)


def test_roi_with_a_project_is_refused(pixelnet, tmp_path, capsys):
    project = histobag.Project.create(tmp_path / "project")
    args = ["extract", "--extractor", "pixelnet", "--project", str(project.root)]
    args += ["--tile-px", str(TILE_PX), "--tile-um", str(TILE_UM), "--roi", str(tmp_path)]
    assert main(args) == 2
    assert "--roi is for --slides" in capsys.readouterr().err


def test_device_cpu_runs_and_an_absent_device_is_refused_before_any_bag(
    pixelnet, slides, tmp_path, capsys
):
    assert _extract(slides, tmp_path / "cpu", "--device", "cpu") == 0
    assert sorted(p.name for p in (tmp_path / "cpu").glob("*.pt")) == ["slide-0.pt", "slide-1.pt"]
    assert _extract(slides, tmp_path / "cuda", "--device", "cuda:7") == 2
    assert "not available on this machine" in capsys.readouterr().err
    assert not list((tmp_path / "cuda").glob("*.pt"))


def test_mpp_lets_a_slide_without_one_be_extracted(pixelnet, tmp_path):
    from histobag.slide import WSI
    from tests.core.conftest import VENDOR_DIR

    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "boxes.tiff").write_bytes((VENDOR_DIR / "boxes.tiff").read_bytes())
    assert _extract(folder, tmp_path / "without", "--tissue", "none") == 1  # the slide fails
    assert _extract(folder, tmp_path / "with", "--tissue", "none", "--mpp", "0.5") == 0
    wsi = WSI(folder / "boxes.tiff", TILE_PX, TILE_UM, mpp=0.5, tissue=None)
    _, kept = wsi.read_tiles(np.arange(len(wsi)), return_mask=True)
    features, _, _ = read_bag(tmp_path / "with", "boxes")
    assert len(features) == int(kept.sum()) > 0
    dataset = histobag.Dataset(folder, None, TILE_PX, TILE_UM, tissue=None, mpp=0.5)
    assert dataset.wsi("boxes").mpp == 0.5
