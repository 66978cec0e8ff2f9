"""Midnight-12k against transformers' ``Dinov2Model``, as its model card loads and pools it.

The card: ``AutoModel.from_pretrained("kaiko-ai/midnight")`` (base model
facebook/dinov2-giant), the classification embedding ``cat([h[:, 0], h[:, 1:].mean(1)])`` of
``last_hidden_state``, and a v2 pipeline of Resize(224), CenterCrop(224), ToTensor and
Normalize(0.5, 0.5). The reference is transformers' own model, saved with ``save_pretrained``
(the published ``model.safetensors``), at two blocks; the full-size layout is compared on the
meta device.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest
import torch

import histobag
from histobag.extractors.preprocess import build_transform
from histobag_apache import midnight
from tests.helpers import histology_tiles
from tests.parity import (
    assert_imports_no_heavy_modules,
    assert_parity,
    build_fp32,
    mismatch_message,
    perturbed,
    to_float,
)

# facebook/dinov2-giant's config.json, the card's base model (written out apart from the pack).
GIANT = {
    "hidden_size": 1536,
    "num_hidden_layers": 40,
    "num_attention_heads": 24,
    "mlp_ratio": 4,
    "use_swiglu_ffn": True,
    "image_size": 518,
    "patch_size": 14,
    "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0,
    "qkv_bias": True,
    "hidden_act": "gelu",
}
HALF = ((0.5,) * 3, (0.5,) * 3)


def dinov2(depth: int | None = None) -> torch.nn.Module:
    """transformers' ``Dinov2Model`` of the card, with ``depth`` layers (40 as published)."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(**{**GIANT, "num_hidden_layers": depth or GIANT["num_hidden_layers"]})
    return Dinov2Model(config).eval()


def card_embedding(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The card's ``extract_classification_embedding`` of the model's output."""
    hidden = model(pixel_values=batch).last_hidden_state
    return torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], dim=-1)


def card_pipeline(*, pil: bool):
    """The card's v2 transform; on float tensors without ToTensor."""
    from torchvision.transforms import v2

    steps = [v2.Resize(224), v2.CenterCrop(224)]
    if pil:
        steps.append(v2.ToTensor())
    return v2.Compose([*steps, v2.Normalize(*HALF)])


@pytest.fixture
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, torch.nn.Module]:
    """(the ``model.safetensors`` of a perturbed two-layer card model, that model); the pack's
    factory builds two blocks."""
    reference = perturbed(dinov2(depth=2))
    reference.save_pretrained(tmp_path)
    monkeypatch.setattr(
        midnight, "VIT_KWARGS", MappingProxyType({**midnight.VIT_KWARGS, "depth": 2})
    )
    return tmp_path / "model.safetensors", reference


@pytest.mark.parametrize("px", [224, 256, 112])
def test_embeddings_match_model_card(px: int, saved: tuple[Path, torch.nn.Module]) -> None:
    """Tiles of 224 and 256 px through each side's default pipeline (position embeddings
    interpolated from 37 x 37 to 16 x 16 as transformers does), and 112 px tiles unresized
    (an 8 x 8 grid), against the card's model and embedding."""
    path, reference = saved
    tiles = histology_tiles(2, px)
    if px == 112:
        extractor = build_fp32("midnight-12k", path, resize=False, center_crop=False)
        batch = card_pipeline(pil=False).transforms[-1](to_float(tiles))
    else:
        extractor = build_fp32("midnight-12k", path)
        batch = card_pipeline(pil=False)(to_float(tiles))
    ours = extractor(tiles)
    with torch.inference_mode():
        expected = card_embedding(reference, batch)
    assert ours.shape == (2, 3072)
    assert_parity(ours, expected)
    print(f"midnight-12k {px}px: max abs diff {float((ours - expected).abs().max()):.2e}")


def test_mismatched_checkpoint_is_named_as_published(
    saved: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    """A checkpoint missing a layer's key is refused, naming it in the Hub layout."""
    from safetensors.torch import load_file

    path, _ = saved
    state = {k: v for k, v in load_file(path).items() if "layer.1.mlp.weights_out" not in k}
    (tmp_path / "bad").mkdir()
    message = mismatch_message("midnight-12k", tmp_path / "bad" / "model.safetensors", state)
    assert "encoder.layer.1.mlp.weights_out.weight" in message
    assert "blocks.1" not in message


def test_full_size_layout_matches_transformers(tmp_path: Path) -> None:
    """The published layout at full size: the card's model at full width, saved by
    ``save_pretrained`` with one layer and that layer's keys repeated for all 40, converted,
    has exactly the keys and shapes of the pack's network on the meta device (1.1B
    parameters). (transformers 5 renames modules in memory, so the file is what counts.)"""
    from safetensors import safe_open

    dinov2(depth=1).save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as file:
        shapes = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}  # noqa: SIM118
    published = {
        key.replace("encoder.layer.0.", f"encoder.layer.{i}."): torch.empty(shape, device="meta")
        for key, shape in shapes.items()
        for i in range(GIANT["num_hidden_layers"] if key.startswith("encoder.layer.0.") else 1)
    }
    spec = histobag.extractor_info("midnight-12k")
    with torch.device("meta"):
        ours = spec.load_factory()(spec).weights_target.state_dict()
    converted = midnight.convert(published)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in ours.items()
    }
    n_params = sum(v.numel() for k, v in published.items() if k != "embeddings.mask_token")
    assert n_params == pytest.approx(1.134e9, rel=0.005)


@pytest.mark.parametrize("px", [224, 256, 512])
def test_default_preprocessing_matches_card_pipeline(px: int) -> None:
    """histobag's transform against the card's v2 pipeline on PIL images: equal at 224 px,
    within PIL's uint8 rounding after a resize (one grey level is 2/255 after scaling)."""
    from PIL import Image

    tiles = histology_tiles(2, px)
    pipeline = card_pipeline(pil=True)
    expected = torch.stack([pipeline(Image.fromarray(tile)) for tile in tiles])
    spec = histobag.extractor_info("midnight-12k")
    ours = build_transform(spec.preprocessing)(torch.from_numpy(tiles).permute(0, 3, 1, 2))
    assert ours.shape == expected.shape == (2, 3, 224, 224)
    diff = (ours - expected).abs()
    if px == 224:
        assert float(diff.max()) <= 1e-6
    else:
        assert float(diff.mean()) < 0.007 and float(diff.max()) < 0.06


def test_listing() -> None:
    """Listed in the Apache pack under the card's MIT licence, open on the Hub."""
    spec = histobag.extractor_info("midnight-12k")
    assert spec.pack == "histobag-apache"
    assert spec.license == "MIT"
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == (
        "kaiko-ai/midnight",
        "model.safetensors",
        False,
    )
    assert spec.num_features == 3072
    assert histobag.extractor_info("midnight12k").name == "midnight-12k"
    assert "Karasikov" in spec.citation


def test_listing_imports_no_torch() -> None:
    """Listing the spec imports neither torch nor timm (nor transformers)."""
    assert_imports_no_heavy_modules(
        "histobag_apache.midnight_specs", "torch", "timm", "transformers"
    )
