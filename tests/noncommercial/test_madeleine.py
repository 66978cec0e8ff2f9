"""MADELEINE slide encoder: parity with the official architecture, checkpoint layout, spec.

The reference below restates the official ``madeleine.models`` code (``MADELEINE`` with
``ABMILEmbedder`` and ``BatchedABMIL``, no stain encodings) module for module, with the same
parameter names, the dropout layers and the ``rearrange('b t (e c) -> b t e c')`` head split
written out by indexing; ``encode_he`` is its forward, as in TRIDENT. Its random weights are
saved as the published ``model.pt`` was: the state dict of the model wrapped in
``nn.DataParallel`` (every key under ``module.``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import histobag
from histobag.errors import CheckpointMismatchError
from histobag_noncommercial import madeleine as md
from histobag_noncommercial.abmil import attention_pool
from tests.parity import assert_imports_no_heavy_modules, perturbed
from tests.slide_bags import generated_bag

N_TILES = 2000
EXTENT_PX = 512  # 256 px tiles at 10x on a 0.5 µm/px slide


class RefBatchedABMIL(nn.Module):
    """The official gated attention head, ``dropout=True``, ``activation='softmax'``."""

    def __init__(self, input_dim: int = 512, hidden_dim: int = 512) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.Tanh(), nn.Dropout(0.25)
        )
        self.attention_b = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.Sigmoid(), nn.Dropout(0.25)
        )
        self.attention_c = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.attention_c(self.attention_a(x).mul(self.attention_b(x)))
        return torch.softmax(scores, dim=1)


class RefABMILEmbedder(nn.Module):
    """The official ``ABMILEmbedder`` (aggregation 'regular', one view)."""

    def __init__(self, input_dim: int, hidden_dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.pre_attn = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Dropout(0.1),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Dropout(0.1),
            nn.Linear(hidden_dim, hidden_dim * n_heads),
            nn.LayerNorm(hidden_dim * n_heads),
            nn.GELU(),
            nn.Dropout(0.1),
        )
        self.attn = nn.ModuleList(RefBatchedABMIL(hidden_dim, 512) for _ in range(n_heads))

    def forward(self, bags: torch.Tensor) -> torch.Tensor:
        embeddings = self.pre_attn(bags)
        # 'b t (e c) -> b t e c' with c = n_heads: [..., e, c] is channel e * n_heads + c
        embeddings = torch.stack(
            [embeddings[..., c :: self.n_heads] for c in range(self.n_heads)], dim=-1
        )
        attention = torch.stack(
            [net(embeddings[:, :, :, i]) for i, net in enumerate(self.attn)], dim=-1
        )
        return torch.sum(embeddings * attention, dim=1)


class RefMadeleine(nn.Module):
    """The official ``MADELEINE`` without stain encodings; :meth:`encode_he` as published."""

    def __init__(self, patch_dim: int = 512, hidden_dim: int = 512, n_heads: int = 4) -> None:
        super().__init__()
        self.token_projector = nn.Linear(512 * n_heads, 128)
        self.wsi_embedders = RefABMILEmbedder(patch_dim, hidden_dim, n_heads)
        self.projector = nn.Linear(512 * n_heads, 512)

    def encode_he(self, feats: torch.Tensor) -> torch.Tensor:
        bs = feats.shape[0]
        feats = feats.unsqueeze(dim=1)
        he_embedding = self.wsi_embedders(feats[:, 0, ::])
        d_out, n_heads = he_embedding.shape[-2], he_embedding.shape[-1]
        he_embedding = self.projector(he_embedding.view(bs, d_out * n_heads))
        return he_embedding.view(bs, 1, d_out).squeeze(dim=1)


def assert_close_to_scale(ours: torch.Tensor, expected: torch.Tensor) -> float:
    """At most 1e-5 of the embedding's scale apart (or 1e-5 where the scale is below 1);
    returns the max abs difference."""
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    diff = float((ours - expected).abs().max())
    assert diff <= 1e-5 * max(1.0, float(expected.abs().max())), diff
    assert float(expected.std()) > 1e-3  # not a constant output
    return diff


@pytest.fixture(scope="module")
def reference() -> RefMadeleine:
    torch.manual_seed(0)
    return perturbed(RefMadeleine(), seed=3)


@pytest.fixture(scope="module")
def checkpoint(reference: RefMadeleine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.pt`` as published: a flat state dict with DataParallel's ``module.`` keys."""
    path = tmp_path_factory.mktemp("madeleine") / "model.pt"
    torch.save(nn.DataParallel(reference).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def bag() -> tuple[torch.Tensor, torch.Tensor]:
    features, coords = generated_bag(N_TILES, 512, extent_px=EXTENT_PX)
    return torch.from_numpy(features), torch.from_numpy(coords)


def test_official_checkpoint_equals_reference_on_a_generated_bag(reference, checkpoint, bag):
    features, coords = bag
    assert len(features) >= N_TILES
    extractor = histobag.build_feature_extractor(
        "madeleine", weights=checkpoint, device="cpu", mixed_precision=False
    )
    assert extractor.num_features == 512
    ours = extractor(features, coords, extent_px=EXTENT_PX)
    with torch.inference_mode():
        expected = reference.encode_he(features[None])[0]
    diff = assert_close_to_scale(ours, expected)
    assert diff < 1e-5
    # coordinates do not enter the embedding
    shifted = extractor(features, coords + 7 * EXTENT_PX, extent_px=EXTENT_PX)
    torch.testing.assert_close(shifted, ours, rtol=0, atol=0)
    # the heads' interleaved split matters: pooling contiguous slices gives another embedding
    model = extractor.model
    with torch.inference_mode():
        tokens = model.wsi_embedders.pre_attn(features[None]).unflatten(-1, (4, 512))
        pooled = [
            attention_pool(head(tokens[:, :, c]), tokens[:, :, c])
            for c, head in enumerate(model.wsi_embedders.attn)
        ]
        contiguous = model.projector(torch.stack(pooled, dim=-1).flatten(1))[0]
    assert float((contiguous - expected).abs().max()) > 1e-2


def test_checkpoint_without_module_prefix_loads(reference, bag, tmp_path):
    # the official loader strips 'module.' only when present; plain state dicts load too
    path = tmp_path / "model.pt"
    torch.save(reference.state_dict(), path)
    extractor = histobag.build_feature_extractor(
        "madeleine", weights=path, device="cpu", mixed_precision=False
    )
    features = bag[0][:300]
    with torch.inference_mode():
        expected = reference.encode_he(features[None])[0]
    assert_close_to_scale(extractor(features, bag[1][:300], extent_px=EXTENT_PX), expected)


def test_wrong_checkpoint_names_keys_as_published(reference, tmp_path):
    state = nn.DataParallel(reference).state_dict()
    del state["module.token_projector.bias"]
    state["module.projector.weight"] = state["module.projector.weight"][:, :1024]
    path = tmp_path / "model.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as caught:
        histobag.build_feature_extractor("madeleine", weights=path, device="cpu")
    message = str(caught.value)
    assert "module.token_projector.bias" in message
    assert "module.projector.weight: checkpoint (512, 1024) vs model (512, 2048)" in message


def test_full_size_keys_and_shapes_equal_the_official_layout():
    with torch.device("meta"):
        ours = md.Madeleine(md.FULL)
        official = nn.DataParallel(RefMadeleine())
    expected = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    got = {md.CHECKPOINT_PREFIX + k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == expected
    assert got["module.wsi_embedders.pre_attn.8.weight"] == (2048, 512)
    assert got["module.wsi_embedders.attn.3.attention_c.weight"] == (1, 512)
    assert sum(p.numel() for p in ours.parameters()) == 4_996_740


def test_spec():
    info = histobag.extractor_info("madeleine")
    assert info.pack == "histobag-noncommercial"
    assert info.kind == "tile_features" and info.tile_encoder == "conch"
    needs = info.slide_input
    assert (needs.tile_encoders, needs.tile_px, needs.magnification) == (("conch",), 256, 10.0)
    assert needs.tile_um == 256.0
    assert histobag.extractor_info("conch").num_features == 512 == info.num_features
    assert (info.hf_repo, info.hf_filename, info.gated) == (
        "MahmoodLab/madeleine",
        "model.pt",
        True,
    )
    assert info.license == "CC-BY-NC-ND-4.0" and "Multistain Pretraining" in info.citation
    assert "slide-encoder" in info.tags
    # listing the ABMIL slide encoders imports no torch
    assert_imports_no_heavy_modules("histobag_noncommercial.abmil_specs", "torch")
