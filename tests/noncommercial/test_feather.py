"""FEATHER slide encoder: parity with MIL-Lab's ABMIL, checkpoint layout, spec.

The reference restates MIL-Lab's ``src/models/abmil.py`` (``ABMIL`` with ``create_mlp`` and
``GlobalGatedAttention``, ``abmil/base.yaml`` sizes, dropout layers included) inside a wrapper
holding it as ``model``, as the Hugging Face ``ABMILModel`` does; ``forward_features`` is what
TRIDENT's ``feather`` encoder returns. Its random weights are saved as ``model.safetensors``
under the wrapper's key names (``model.…``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import histobag
from histobag.errors import CheckpointMismatchError
from histobag_noncommercial import abmil
from histobag_noncommercial import feather as ft
from tests.parity import perturbed
from tests.slide_bags import generated_bag

N_TILES = 2000
EXTENT_PX = 512  # 512 px tiles at 20x on a 0.5 µm/px slide


class RefGlobalGatedAttention(nn.Module):
    """MIL-Lab's ``GlobalGatedAttention`` (L=512, D=384, one score)."""

    def __init__(self, L: int = 512, D: int = 384, dropout: float = 0.25) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(L, D), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(L, D), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(D, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention_c(self.attention_a(x).mul(self.attention_b(x)))


class RefABMIL(nn.Module):
    """MIL-Lab's ``ABMIL`` with ``num_fc_layers=1``: ``create_mlp`` gives Linear then ReLU."""

    def __init__(self, in_dim: int = 768, embed_dim: int = 512, num_classes: int = 0) -> None:
        super().__init__()
        self.patch_embed = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU())
        self.global_attn = RefGlobalGatedAttention(embed_dim, 384)
        if num_classes > 0:
            self.classifier = nn.Linear(embed_dim, num_classes)

    def forward_features(self, h: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(h)
        scores = torch.transpose(self.global_attn(h), -2, -1)
        return torch.bmm(F.softmax(scores, dim=-1), h).squeeze(dim=1)


class RefABMILModel(nn.Module):
    """The Hugging Face wrapper: the ABMIL lives under ``model``."""

    def __init__(self, num_classes: int = 0) -> None:
        super().__init__()
        self.model = RefABMIL(num_classes=num_classes)


def assert_close_to_scale(ours: torch.Tensor, expected: torch.Tensor) -> float:
    """At most 1e-5 of the embedding's scale apart (or 1e-5 where the scale is below 1);
    returns the max abs difference."""
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    diff = float((ours - expected).abs().max())
    assert diff <= 1e-5 * max(1.0, float(expected.abs().max())), diff
    assert float(expected.std()) > 1e-3  # not a constant output
    return diff


@pytest.fixture(scope="module")
def reference() -> RefABMILModel:
    torch.manual_seed(0)
    return perturbed(RefABMILModel(), seed=5)


def save_safetensors(module: nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(reference: RefABMILModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_safetensors(reference, tmp_path_factory.mktemp("feather") / "model.safetensors")


@pytest.fixture(scope="module")
def bag() -> tuple[torch.Tensor, torch.Tensor]:
    features, coords = generated_bag(N_TILES, 768, extent_px=EXTENT_PX)
    return torch.from_numpy(features), torch.from_numpy(coords)


def build(weights: Path) -> histobag.FeatureExtractor:
    return histobag.build_feature_extractor(
        "feather", weights=weights, device="cpu", mixed_precision=False
    )


def test_official_checkpoint_equals_reference_on_a_generated_bag(reference, checkpoint, bag):
    features, coords = bag
    assert len(features) >= N_TILES
    extractor = build(checkpoint)
    assert extractor.num_features == 512
    ours = extractor(features, coords, extent_px=EXTENT_PX)
    with torch.inference_mode():
        expected = reference.model.forward_features(features[None])[0]
    assert assert_close_to_scale(ours, expected) < 1e-5
    # the attention is far from uniform: the plain mean of the embedded tiles differs
    with torch.inference_mode():
        mean = reference.model.patch_embed(features).mean(0)
    assert float((mean - expected).abs().max()) > 1e-2
    shifted = extractor(features, coords + 3 * EXTENT_PX, extent_px=EXTENT_PX)
    torch.testing.assert_close(shifted, ours, rtol=0, atol=0)


def test_classifier_head_and_unprefixed_files(reference, bag, tmp_path):
    features, coords = bag[0][:300], bag[1][:300]
    with torch.inference_mode():
        expected = reference.model.forward_features(features[None])[0]
    # a file with a classification head: the head does not enter the slide embedding
    with_head = perturbed(RefABMILModel(num_classes=108), seed=6)
    path = save_safetensors(with_head, tmp_path / "head.safetensors")
    with torch.inference_mode():
        expected_head = with_head.model.forward_features(features[None])[0]
    assert_close_to_scale(build(path)(features, coords, extent_px=EXTENT_PX), expected_head)
    # MIL-Lab's pytorch_model.bin layout: the ABMIL's own keys, no 'model.'
    bare = tmp_path / "pytorch_model.bin"
    torch.save(reference.model.state_dict(), bare)
    assert_close_to_scale(build(bare)(features, coords, extent_px=EXTENT_PX), expected)


def test_wrong_checkpoint_names_keys_as_published(reference, tmp_path):
    state = dict(reference.state_dict())
    del state["model.global_attn.attention_b.0.bias"]
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(CheckpointMismatchError, match=r"model\.global_attn\.attention_b\.0\.bias"):
        build(path)


def test_full_size_keys_and_shapes_equal_the_official_layout():
    with torch.device("meta"):
        ours = ft.Feather(ft.FULL)
        official = RefABMILModel()
    expected = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    got = {ft.CHECKPOINT_PREFIX + k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == expected
    assert got["model.patch_embed.0.weight"] == (512, 768)
    assert got["model.global_attn.attention_a.0.weight"] == (384, 512)
    assert sum(p.numel() for p in ours.parameters()) == 788_097


def test_attention_pool_is_the_softmax_weighted_mean():
    scores = torch.tensor([[0.0, 0.0, 1000.0], [1.0, 1.0, 1.0]])
    values = torch.arange(12.0).view(2, 3, 2)
    pooled = abmil.attention_pool(scores, values)
    torch.testing.assert_close(pooled, torch.stack([values[0, 2], values[1].mean(0)]))


def test_spec():
    info = histobag.extractor_info("feather")
    assert info.pack == "histobag-noncommercial"
    assert info.kind == "tile_features" and info.tile_encoder == "conch-v1.5"
    needs = info.slide_input
    assert (needs.tile_encoders, needs.tile_px, needs.magnification) == (("conch-v1.5",), 512, 20.0)
    assert histobag.extractor_info("conch-v1.5").num_features == 768
    assert (info.hf_repo, info.hf_filename, info.gated) == (
        "MahmoodLab/abmil.base.conch_v15.pc108-24k",
        "model.safetensors",
        True,
    )
    assert info.license == "CC-BY-NC-ND-4.0" and "Multiple Instance Learning" in info.citation
    assert histobag.extractor_info("feather-conch-v1.5").name == "feather"


def test_auto_precision_is_float32_as_trident_runs_it():
    feather = histobag.build_feature_extractor("feather", weights="random", device="cpu")
    assert histobag.extractor_info("feather").autocast_dtype == "float32"
    assert feather.precision == "float32"
