"""kaiko.ai's ViT-S/8, S/16, B/8, B/16 and L/14 against their torch.hub entry points.

The entry points (``hubconf.py`` of kaiko-ai/towards_large_pathology_fms) are written out here
apart from the pack's code: ``timm.create_model(arch, dynamic_img_size=True, pretrained=True,
pretrained_cfg={<weights>, "num_classes": 0})``, and the README's v2 pipeline. The shared harness
of :mod:`tests.parity` runs its checks on each; the tests below add the published file format,
timm's own pretrained loading as the reference, and the pipeline on 224, 256 and 512 px tiles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from torch import nn

import histobag
from histobag.extractors.preprocess import build_transform
from histobag_noncommercial import kaiko
from tests.helpers import histology_tiles
from tests.parity import (
    TimmCard,
    TimmCardChecks,
    assert_imports_no_heavy_modules,
    assert_parity,
    build_fp32,
    cls_token,
    perturbed,
    shrink,
    timm_create,
    to_float,
)

HALF: tuple[tuple[float, float, float], tuple[float, float, float]] = ((0.5,) * 3, (0.5,) * 3)
ENTRY_POINT = {"dynamic_img_size": True, "num_classes": 0}


@dataclass(frozen=True)
class KaikoCard(TimmCard):
    """A hub entry point: its ViTs have LayerScale only at L/14, and the README's pipeline is
    torchvision's v2 on the PIL image turned into a uint8 tensor first."""

    def reference(self, depth: int) -> nn.Module:
        """The entry point's network with ``depth`` blocks, every tensor perturbed."""
        return perturbed(timm_create(self.arch, **{**self.kwargs, "depth": depth}))

    def transform(self, *, pil: bool) -> Callable[[Any], torch.Tensor]:
        """The README's pipeline; on float tensors without the uint8 conversion steps."""
        from torchvision.transforms import v2

        steps = [v2.Resize(size=224), v2.CenterCrop(size=224)]
        if pil:
            steps = [v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True)]
        return v2.Compose([*steps, v2.Normalize(*self.norm)])


def _card(arch: str, million_params: float) -> KaikoCard:
    return KaikoCard(
        kaiko,
        arch,
        ENTRY_POINT,
        cls_token,
        million_params,
        ("bilinear", 224, 224),
        tile_px=256,
        pil_px=512,
        norm=HALF,
    )


# name: the entry point's architecture and the published size (ViT-S 22M, ViT-B 86M, L 304M).
CARDS = {
    "kaiko-vits8": _card("vit_small_patch8_224", 21.7),
    "kaiko-vits16": _card("vit_small_patch16_224", 21.7),
    "kaiko-vitb8": _card("vit_base_patch8_224", 85.8),
    "kaiko-vitb16": _card("vit_base_patch16_224", 85.8),
    "kaiko-vitl14": _card("vit_large_patch14_reg4_dinov2", 304.4),
}


class TestKaikoCards(TimmCardChecks):
    cards = CARDS


@pytest.mark.parametrize("name", list(CARDS))
def test_hub_safetensors_match_timm_pretrained_loading(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Hub's ``model.safetensors`` of a perturbed network, loaded by histobag, against the
    entry point's own loading of that file (timm's pretrained path, checkpoint filter and all)
    at two blocks, on 256 px tiles through the README's pipeline."""
    from safetensors.torch import save_file

    card = CARDS[name]
    source = card.reference(depth=2)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    # hubconf.py's call, the release URL replaced by the local file.
    official = timm.create_model(
        model_name=card.arch,
        dynamic_img_size=True,
        pretrained_cfg={"file": str(path), "num_classes": 0},
        pretrained=True,
        depth=2,
    ).eval()
    shrink(monkeypatch, kaiko, depth=2)
    extractor = build_fp32(name, path)
    tiles = histology_tiles(2, 256)
    ours = extractor(tiles)
    with torch.inference_mode():
        expected = official(card.reference_batch(tiles))
    assert ours.shape == (2, histobag.extractor_info(name).num_features)
    assert_parity(ours, expected)
    print(f"{name}: max abs diff {float((ours - expected).abs().max()):.2e}")


def test_vitl14_position_embeddings_follow_the_tile_grid() -> None:
    """ViT-L/14 keeps the entry point's 518 px position embeddings (37 x 37 patches, after the
    class token and 4 registers' none) and accepts any multiple of 14."""
    spec = histobag.extractor_info("kaiko-vitl14")
    with torch.device("meta"):
        build = spec.load_factory()(spec)
    assert tuple(build.weights_target.pos_embed.shape) == (1, 37 * 37, 1024)
    assert build.weights_target.num_prefix_tokens == 5
    assert (build.fixed_input_size, build.input_multiple) == (None, 14)


@pytest.mark.parametrize("px", [224, 256, 512])
def test_default_preprocessing_matches_readme_pipeline(px: int) -> None:
    """histobag's transform against the README's v2 pipeline on PIL images at 224, 256 and
    512 px: equal at 224 px (no resampling), within uint8 rounding after a resize."""
    from PIL import Image

    card = CARDS["kaiko-vits16"]
    pipeline = card.transform(pil=True)
    tiles = histology_tiles(2, px)
    expected = torch.stack([pipeline(Image.fromarray(tile)) for tile in tiles])
    for name in CARDS:
        ours = build_transform(histobag.extractor_info(name).preprocessing)(
            torch.from_numpy(tiles).permute(0, 3, 1, 2)
        )
        assert ours.shape == expected.shape == (2, 3, 224, 224)
        diff = (ours - expected).abs()
        # One grey level is 2/255 ~ 0.0078 after the [-1, 1] scaling.
        assert float(diff.max()) <= (1e-6 if px == 224 else 0.0079)
    assert float(to_float(tiles).std()) > 0.05  # real tissue, not a blank tile


def test_listing() -> None:
    """Each is listed in the non-commercial pack under Kaiko's licence, open on the Hub."""
    for name, card in CARDS.items():
        spec = histobag.extractor_info(name)
        assert spec.pack == "histobag-noncommercial"
        assert spec.license == "LicenseRef-kaiko-non-commercial"
        assert spec.license_url.endswith("towards_large_pathology_fms/blob/main/LICENSE")
        assert spec.hf_repo == f"1aurent/{card.arch}.kaiko_ai_towards_large_pathology_fms"
        assert (spec.hf_filename, spec.gated) == ("model.safetensors", False)
        assert spec.preprocessing.mean == spec.preprocessing.std == (0.5, 0.5, 0.5)
        assert "2404.15217" in spec.citation


def test_listing_imports_no_torch() -> None:
    """Listing the spec imports neither torch nor timm (nor transformers)."""
    assert_imports_no_heavy_modules(
        "histobag_noncommercial.kaiko_specs", "torch", "timm", "transformers"
    )
