"""The specs of histobag-gpl: listing, licences, citations, and no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import histobag
from histobag import cli


def test_pack_lists_its_two_models():
    assert histobag.list_extractors(pack="histobag-gpl") == ["ctranspath", "retccl"]
    assert set(histobag.list_extractors(license="GPL-3.0-only")) >= {"ctranspath", "retccl"}
    assert set(histobag.list_extractors(tag="ssl")) >= {"ctranspath", "retccl"}


def test_specs_carry_licence_weights_and_preprocessing():
    ctp, ret = histobag.extractor_info("ctranspath"), histobag.extractor_info("retccl")
    for spec in (ctp, ret):
        assert spec.license == "GPL-3.0-only"
        assert spec.license_url.startswith("https://github.com/Xiyue-Wang/")
        assert spec.citation.startswith("@article{") and "Medical Image Analysis" in spec.citation
        assert set(spec.tags) == {"ssl", "pathology"}
        assert spec.preprocessing.resize is None and spec.preprocessing.center_crop is None
        assert spec.preprocessing.mean == (0.485, 0.456, 0.406)
        assert not spec.gated
    assert (ctp.hf_repo, ctp.hf_filename, ctp.checkpoint_keys) == (
        "jamesdolezal/CTransPath",
        "ctranspath.pth",
        ("model",),
    )
    assert (ret.hf_repo, ret.hf_filename, ret.checkpoint_keys) == (
        "jamesdolezal/RetCCL",
        "retccl.pth",
        (),
    )
    assert (ctp.num_features, ctp.input_size, ret.num_features, ret.input_size) == (
        768,
        224,
        2048,
        256,
    )
    assert "256" in ret.description


def test_info_shows_licence_and_citation(capsys):
    assert cli.main(["info", "ctranspath"]) == 0
    out = capsys.readouterr().out
    assert "GPL-3.0-only" in out and "Xiyue-Wang/TransPath" in out
    assert "Transformer-based unsupervised contrastive learning" in out
    assert "jamesdolezal/CTransPath" in out and "7c998680060c" in out
    assert cli.main(["info", "retccl", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"] == ["ssl", "pathology"]


def test_listing_imports_no_torch_or_timm():
    code = (
        "import sys, histobag; histobag.list_extractors(pack='histobag-gpl'); "
        "import histobag_gpl.plugin; "
        "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
