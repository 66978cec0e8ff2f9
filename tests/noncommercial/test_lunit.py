"""Lunit's DINO ViT-S/8 against the network its README builds.

The README (lunit-io/benchmark-ssl-pathology) creates timm's ``VisionTransformer(img_size=224,
patch_size=8, embed_dim=384, num_heads=6, num_classes=0)`` and loads the release file into it
strictly; that is written out here apart from the pack's code. The shared harness of
:mod:`tests.parity` runs its checks; the tests below add the README's own class, the release
file and the Hub's safetensors, and the 224/256/512 px inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import histobag
from histobag.errors import ExtractorArgumentError
from histobag.extractors.preprocess import build_transform
from histobag_noncommercial import lunit
from tests.helpers import histology_tiles
from tests.parity import (
    TimmCard,
    TimmCardChecks,
    assert_imports_no_heavy_modules,
    assert_parity,
    build_fp32,
    cls_token,
    normalised,
    perturbed,
    save_checkpoint,
    shrink,
)

LUNIT_NORM = ((0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464))
README = {"img_size": 224, "patch_size": 8, "embed_dim": 384, "num_heads": 6, "num_classes": 0}


def readme_network(depth: int = 12) -> nn.Module:
    """The README's ``vit_small`` with ``depth`` blocks (12 as published)."""
    return VisionTransformer(**README, depth=depth)


@dataclass(frozen=True)
class LunitCard(TimmCard):
    """The README's network has no LayerScale; the harness's reference is the README's class."""

    def reference(self, depth: int) -> nn.Module:
        """The README's network with ``depth`` blocks, every tensor perturbed."""
        return perturbed(readme_network(depth))


# No inference transform is published: 224 px tiles go in as they are, with Lunit's norm.
CARD = LunitCard(
    lunit,
    "vit_small_patch8_224",
    {"img_size": 224, "num_classes": 0},
    cls_token,
    21.7,
    ("bilinear", None, None),
    norm=LUNIT_NORM,
)


CARDS = {"lunit-vits8": CARD}


class TestLunitCard(TimmCardChecks):
    cards = CARDS


def test_layout_is_the_readmes_network() -> None:
    """On the meta device, the registered network has the README class's keys and shapes."""
    spec = histobag.extractor_info("lunit-vits8")
    with torch.device("meta"):
        ours = spec.load_factory()(spec).weights_target.state_dict()
        theirs = readme_network().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("filename", ["dino_vit_small_patch8_ep200.torch", "model.safetensors"])
def test_release_file_and_hub_copy_match_readme_network(
    filename: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The release file (a flat ``torch.save`` state dict) and the Hub's safetensors copy of a
    perturbed README network at two blocks, loaded by histobag, against that network."""
    reference = CARD.reference(depth=2)
    path = tmp_path / filename
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    else:
        save_checkpoint(reference.state_dict(), path)
    shrink(monkeypatch, lunit, depth=2)
    extractor = build_fp32("lunit-vits8", path)
    tiles = histology_tiles(2, 224)
    ours = extractor(tiles)
    with torch.inference_mode():
        expected = reference(normalised(tiles, LUNIT_NORM))
    assert ours.shape == (2, 384)
    assert_parity(ours, expected)
    print(f"lunit-vits8 ({filename}): max abs diff {float((ours - expected).abs().max()):.2e}")


@pytest.mark.parametrize("px", [224, 256, 512])
def test_tile_sizes(px: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """224 px tiles are only normalised (exactly as torchvision's Normalize); 256 and 512 px
    tiles are refused unless resized, as the network takes 224 px only."""
    from torchvision.transforms import v2

    tiles = histology_tiles(2, px)
    batch = torch.from_numpy(tiles).permute(0, 3, 1, 2)
    spec = histobag.extractor_info("lunit-vits8")
    if px == 224:
        ours = build_transform(spec.preprocessing)(batch)
        expected = v2.Normalize(*LUNIT_NORM)(batch.float() / 255)
        assert float((ours - expected).abs().max()) <= 1e-6
        return
    shrink(monkeypatch, lunit, depth=1)
    extractor = histobag.build_feature_extractor("lunit-vits8", weights="random", device="cpu")
    with pytest.raises(ExtractorArgumentError, match="only accepts 224x224"):
        extractor(tiles)
    resized = histobag.build_feature_extractor(
        "lunit-vits8", weights="random", device="cpu", resize=True
    )
    assert resized(tiles).shape == (2, 384)


def test_listing() -> None:
    """Listed in the non-commercial pack under Lunit's licence, open on the Hub."""
    spec = histobag.extractor_info("lunit-vits8")
    assert spec.pack == "histobag-noncommercial"
    assert spec.license == "LicenseRef-lunit-non-commercial"
    assert spec.license_url.endswith("benchmark-ssl-pathology/blob/main/LICENSE")
    assert spec.hf_repo == "1aurent/vit_small_patch8_224.lunit_dino"
    assert (spec.hf_filename, spec.gated, spec.num_features) == ("model.safetensors", False, 384)
    assert (spec.preprocessing.mean, spec.preprocessing.std) == LUNIT_NORM
    assert "Kang" in spec.citation


def test_listing_imports_no_torch() -> None:
    """Listing the spec imports neither torch nor timm (nor transformers)."""
    assert_imports_no_heavy_modules(
        "histobag_noncommercial.lunit_specs", "torch", "timm", "transformers"
    )
