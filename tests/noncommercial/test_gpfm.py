"""GPFM against timm built as the official code and TRIDENT describe it.

The card's network is timm's ``vit_large_patch14_dinov2`` with the arguments of the official
``vit_large`` (224 px, LayerScale 1e-5, plain MLP, position embeddings interpolated); the
embedding is the class token after the final norm; the pipeline resizes to 224 px (bicubic)
with ImageNet normalisation. :mod:`tests.parity` runs the checks; the nested
``{'state_dict': ...}`` form of ``GPFM.pth`` and the spec are checked here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import histobag
from histobag_noncommercial import gpfm
from tests.helpers import histology_tiles
from tests.parity import (
    TimmCard,
    TimmCardChecks,
    assert_imports_no_heavy_modules,
    assert_parity,
    build_fp32,
    cls_token,
    save_checkpoint,
    shrink,
)

GPFM_KWARGS = dict(img_size=224, init_values=1e-5, num_classes=0, dynamic_img_size=True)

CARD = TimmCard(
    gpfm,
    "vit_large_patch14_dinov2",
    GPFM_KWARGS,
    cls_token,
    303.2,
    ("bicubic", 224, None),
    tile_px=512,
)


CARDS = {"gpfm": CARD}


class TestGPFM(TimmCardChecks):
    cards = CARDS


def test_nested_state_dict_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``{'state_dict': weights}`` (the form TRIDENT unwraps) gives the same embeddings."""
    reference = CARD.reference(depth=1)
    path = save_checkpoint(reference.state_dict(), tmp_path / "GPFM.pth", nest="state_dict")
    shrink(monkeypatch, gpfm, depth=1)
    extractor = build_fp32("gpfm", path)
    tiles = histology_tiles(2, 224)
    with torch.inference_mode():
        expected = reference(CARD.reference_batch(tiles))
    assert_parity(extractor(tiles), expected)


def test_spec() -> None:
    spec = histobag.extractor_info("gpfm")
    assert spec.pack == "histobag-noncommercial"
    assert spec.license == "CC-BY-NC-ND-4.0" and spec.license_url.endswith("GPFM/blob/main/LICENSE")
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == ("majiabo/GPFM", "GPFM.pth", False)
    assert (spec.num_features, spec.input_size) == (1024, 224)
    assert spec.checkpoint_keys == ("state_dict",)
    assert "Ma, Jiabo" in spec.citation and spec.citation.count("{") == spec.citation.count("}")


def test_listing_imports_no_torch() -> None:
    assert_imports_no_heavy_modules(
        "histobag_noncommercial.gpfm_specs", "torch", "timm", "transformers"
    )
