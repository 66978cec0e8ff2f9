"""UNI, UNI2-h, Virchow2, GigaPath tile as listed: pack, licence, gated weights; no torch."""

from __future__ import annotations

import pytest

import histobag
from tests.parity import assert_gated_spec, assert_imports_no_heavy_modules, info_text

NONCOMMERCIAL = "histobag-noncommercial"
OURS = {"uni", "uni2-h", "virchow2", "gigapath.tile"}


def test_listed_in_this_pack_only() -> None:
    assert set(histobag.list_extractors(pack=NONCOMMERCIAL, tag="foundation")) >= OURS
    assert not OURS & set(histobag.list_extractors(pack="histobag-apache"))


@pytest.mark.parametrize(
    ("name", "repo", "license", "features"),
    [
        ("uni", "MahmoodLab/UNI", "CC-BY-NC-ND-4.0", 1024),
        ("uni2-h", "MahmoodLab/UNI2-h", "CC-BY-NC-ND-4.0", 1536),
        ("virchow2", "paige-ai/Virchow2", "CC-BY-NC-ND-4.0", 2560),
        ("gigapath.tile", "prov-gigapath/prov-gigapath", "LicenseRef-prov-gigapath", 1536),
    ],
)
def test_spec(name: str, repo: str, license: str, features: int) -> None:
    assert_gated_spec(name, pack=NONCOMMERCIAL, repo=repo, license=license, num_features=features)


def test_gigapath_terms_are_stated() -> None:
    spec = histobag.extractor_info("gigapath-tile")
    assert spec.name == "gigapath.tile"
    assert "research use only" in spec.description
    assert spec.license_url == "https://huggingface.co/prov-gigapath/prov-gigapath"


@pytest.mark.parametrize(
    ("name", "resize", "interpolation"),
    [
        ("uni", 224, "bilinear"),
        ("uni2-h", 224, "bilinear"),
        ("virchow2", 224, "bicubic"),
        ("gigapath.tile", 256, "bicubic"),
    ],
)
def test_preprocessing_defaults(name: str, resize: int, interpolation: str) -> None:
    pre = histobag.extractor_info(name).preprocessing
    assert (pre.resize, pre.center_crop, pre.resize_first) == (resize, 224, True)
    assert (pre.interpolation, pre.antialias) == (interpolation, True)
    assert (pre.mean, pre.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_info_shows_the_gated_repository(capsys) -> None:
    out = info_text("uni", capsys)
    assert "https://huggingface.co/MahmoodLab/UNI file pytorch_model.bin" in out
    assert "gated: request access" in out
    assert "CC-BY-NC-ND-4.0" in out
    assert "Towards a general-purpose foundation model" in out


def test_specs_import_no_torch_or_timm() -> None:
    assert_imports_no_heavy_modules("histobag_noncommercial.timm_specs", "torch", "timm")
