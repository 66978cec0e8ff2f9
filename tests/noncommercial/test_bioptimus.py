"""H-optimus-1 and H0-mini against timm, built, pooled and fed as their model cards say.

H-optimus-1's ``create_model`` call is H-optimus-0's (the same ViT-g/14 with 4 registers, same
``config.json``); its pipeline is ``ToTensor`` then ``Normalize`` with Bioptimus's mean and std,
on 224 px tiles at 0.5 mpp. H0-mini's card creates ``hf-hub:bioptimus/H0-mini`` with
``mlp_layer=SwiGLUPacked, act_layer=SiLU`` (a ViT-B/14, 4 registers, 85.7M parameters; its
forward returns every token) and feeds timm's ``create_transform`` of the pretrained config.
The shared harness of :mod:`tests.parity` runs the checks (full-size layout on the meta device,
embeddings at reduced depth, preprocessing against PIL, the fixed input size).
"""

from __future__ import annotations

import pytest
import torch

import histobag
from histobag.extractors.preprocess import build_transform
from histobag_noncommercial import bioptimus, bioptimus_h0mini
from tests.helpers import histology_tiles
from tests.parity import (
    TimmCard,
    TimmCardChecks,
    assert_gated_spec,
    assert_imports_no_heavy_modules,
    cls_and_patch_mean,
    cls_token,
    info_text,
)

# The card's create_model arguments, written out independently of the pack's module.
H_OPTIMUS_1 = dict(
    img_size=224, init_values=1e-5, dynamic_img_size=False, num_classes=0, global_pool="token"
)
H_OPTIMUS_NORM = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


def _h0_mini_kwargs() -> dict:
    """The card's create_model call on the hub config: model_args (224 px, LayerScale, 4
    registers, a packed SwiGLU of 2 x 2048, every token out) plus the card's MLP arguments."""
    from timm.layers import SwiGLUPacked

    return dict(
        img_size=224,
        init_values=1e-5,
        reg_tokens=4,
        mlp_ratio=4096 / 768,
        num_classes=0,
        global_pool="",
        mlp_layer=SwiGLUPacked,
        act_layer=torch.nn.SiLU,
    )


H0_MINI = _h0_mini_kwargs()

# The card feeds 224 px tiles as they are; bicubic is what a user-requested resize uses.
CARDS = {
    "h-optimus-1": TimmCard(
        bioptimus,
        "vit_giant_patch14_reg4_dinov2",
        H_OPTIMUS_1,
        cls_token,
        1135,
        ("bicubic", None, None),
        norm=H_OPTIMUS_NORM,
    ),
    # output[:, 0] and cat([output[:, 0], output[:, num_prefix_tokens:].mean(1)]).
    "h0-mini": TimmCard(
        bioptimus_h0mini,
        "vit_base_patch14_reg4_dinov2",
        H0_MINI,
        lambda model, x: model(x)[:, 0],
        85.7,
        ("bicubic", 224, 224),
        pil_px=256,
        norm=H_OPTIMUS_NORM,
    ),
    "h0-mini-cls-mean": TimmCard(
        bioptimus_h0mini,
        "vit_base_patch14_reg4_dinov2",
        H0_MINI,
        cls_and_patch_mean(5),
        85.7,
        ("bicubic", 224, 224),
        tile_px=256,
        pil_px=512,
        norm=H_OPTIMUS_NORM,
    ),
}


class TestBioptimusCards(TimmCardChecks):
    cards = CARDS


def test_spec() -> None:
    assert_gated_spec(
        "h-optimus-1",
        pack="histobag-noncommercial",
        repo="bioptimus/H-optimus-1",
        license="LicenseRef-bioptimus-h-optimus-1",
        num_features=1536,
    )
    spec = histobag.extractor_info("h-optimus-1")
    assert spec.license_url == "https://huggingface.co/bioptimus/H-optimus-1"
    assert "h-optimus-1" not in histobag.list_extractors(license="apache-2.0")
    assert histobag.extractor_info("hoptimus1").name == "h-optimus-1"
    pre = spec.preprocessing
    assert (pre.resize, pre.center_crop) == (None, None)
    assert (pre.mean, pre.std) == H_OPTIMUS_NORM


def test_info_shows_the_terms(capsys) -> None:
    out = info_text("h-optimus-1", capsys)
    assert "https://huggingface.co/bioptimus/H-optimus-1 file pytorch_model.bin" in out
    assert "academic research" in out


def test_specs_import_no_heavy_modules() -> None:
    assert_imports_no_heavy_modules("histobag_noncommercial.bioptimus_specs", "torch", "timm")


@pytest.mark.parametrize("name", ["h0-mini", "h0-mini-cls-mean"])
def test_h0_mini_spec(name: str) -> None:
    spec = histobag.extractor_info(name)
    assert spec.pack == "histobag-noncommercial"
    assert spec.license == "LicenseRef-bioptimus-h0-mini"
    assert spec.license_url == "https://huggingface.co/bioptimus/H0-mini"
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == (
        "bioptimus/H0-mini",
        "pytorch_model.bin",
        True,
    )
    assert (spec.num_features, spec.input_size) == ({"h0-mini": 768}.get(name, 1536), 224)
    assert spec.autocast_dtype == "float16"  # the card's mixed precision
    assert "arXiv" in spec.citation and spec.citation.count("{") == spec.citation.count("}")
    assert name not in histobag.list_extractors(license="apache-2.0")
    assert histobag.extractor_info("h0mini").name == "h0-mini"


@pytest.mark.parametrize("side", [224, 256, 512])
def test_h0_mini_preprocessing_is_the_cards_timm_transform(side: int) -> None:
    """The card's ``create_transform(**resolve_data_config(pretrained_cfg))`` on PIL tiles: the
    hub config's 224 px input and Bioptimus's mean and std over timm's DINOv2 defaults
    (bicubic, crop_pct 1.0)."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    cfg = {
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": H_OPTIMUS_NORM[0],
        "std": H_OPTIMUS_NORM[1],
    }
    card = create_transform(**resolve_data_config(cfg))
    tiles = histology_tiles(2, side)
    expected = torch.stack([card(Image.fromarray(tile)) for tile in tiles])
    spec = histobag.extractor_info("h0-mini")
    ours = build_transform(spec.preprocessing)(torch.from_numpy(tiles).permute(0, 3, 1, 2))
    assert ours.shape == expected.shape == (2, 3, 224, 224)
    diff = (ours - expected).abs()
    if side == 224:  # nothing resampled: exact
        assert float(diff.max()) <= 1e-6
    else:  # PIL rounds its resampled image to uint8, about half a grey level
        assert float(diff.mean()) < 0.007 and float(diff.max()) < 0.06
