"""Virchow and H-optimus-0 as listed: pack, licence, gated weights, citations; no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import histobag
from histobag.cli import main

APACHE = "histobag-apache"


def test_listed_in_this_pack() -> None:
    assert histobag.list_extractors(pack=APACHE, tag="foundation") == ["h-optimus-0", "virchow"]
    assert {"h-optimus-0", "virchow"} <= set(histobag.list_extractors(license="apache-2.0"))


@pytest.mark.parametrize(
    ("name", "repo", "features"),
    [("virchow", "paige-ai/Virchow", 2560), ("h-optimus-0", "bioptimus/H-optimus-0", 1536)],
)
def test_spec(name: str, repo: str, features: int) -> None:
    spec = histobag.extractor_info(name)
    assert spec.pack == APACHE
    assert spec.license == "Apache-2.0"
    assert spec.license_url.startswith("https://www.apache.org/licenses/")
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == (repo, "pytorch_model.bin", True)
    assert spec.num_features == features
    assert spec.input_size == 224
    assert spec.autocast_dtype == "bfloat16"  # ViT-H/g activations overflow float16
    assert {"foundation", "pathology"} <= set(spec.tags)
    assert f"huggingface.co/{repo}" in spec.description
    assert spec.citation.startswith("@")
    assert spec.citation.count("{") == spec.citation.count("}")
    assert spec.model_kwargs == ()


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
    assert main(["info", "virchow"]) == 0
    out = capsys.readouterr().out
    assert "https://huggingface.co/paige-ai/Virchow file pytorch_model.bin" in out
    assert "gated" in out
    assert "Vorontsov" in out


def test_specs_import_no_torch_or_timm() -> None:
    code = (
        "import sys, histobag_apache.foundation_specs as f; f.specs(); "
        "heavy = {'torch', 'timm'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
