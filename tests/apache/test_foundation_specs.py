"""Virchow and H-optimus-0 as listed: pack, licence, gated weights, citations; no torch."""

from __future__ import annotations

import pytest

import histobag
from tests.parity import assert_gated_spec, assert_imports_no_heavy_modules, info_text

APACHE = "histobag-apache"


def test_listed_in_this_pack() -> None:
    listed = histobag.list_extractors(pack=APACHE, tag="foundation")
    assert {"h-optimus-0", "virchow"} <= set(listed)  # with the pack's later models
    for name in listed:  # a permissive licence only, in this pack
        assert histobag.extractor_info(name).license in {"Apache-2.0", "MIT", "BSD-3-Clause"}
    assert {"h-optimus-0", "virchow"} <= set(histobag.list_extractors(license="apache-2.0"))


@pytest.mark.parametrize(
    ("name", "repo", "features"),
    [("virchow", "paige-ai/Virchow", 2560), ("h-optimus-0", "bioptimus/H-optimus-0", 1536)],
)
def test_spec(name: str, repo: str, features: int) -> None:
    assert_gated_spec(name, pack=APACHE, repo=repo, license="Apache-2.0", num_features=features)
    assert histobag.extractor_info(name).license_url.startswith("https://www.apache.org/")


def test_preprocessing_defaults() -> None:
    virchow = histobag.extractor_info("virchow").preprocessing
    assert (virchow.resize, virchow.center_crop, virchow.resize_first) == (224, 224, True)
    assert (virchow.interpolation, virchow.antialias) == ("bicubic", True)
    assert virchow.mean == (0.485, 0.456, 0.406)
    hopt = histobag.extractor_info("h-optimus-0").preprocessing
    assert (hopt.resize, hopt.center_crop) == (None, None)  # 224 px tiles at 0.5 mpp as they are
    assert hopt.mean == (0.707223, 0.578729, 0.703617)
    assert hopt.std == (0.211883, 0.230117, 0.177517)


def test_alias() -> None:
    assert histobag.extractor_info("hoptimus0").name == "h-optimus-0"


def test_info_shows_the_gated_repository(capsys) -> None:
    out = info_text("virchow", capsys)
    assert "https://huggingface.co/paige-ai/Virchow file pytorch_model.bin" in out
    assert "gated" in out
    assert "Vorontsov" in out


def test_specs_import_no_torch_or_timm() -> None:
    assert_imports_no_heavy_modules("histobag_apache.foundation_specs", "torch", "timm")
