"""TITAN against its official code, restated here from the published files.

The reference below is written from the ``MahmoodLab/TITAN`` repository's
``vision_transformer.py`` (``preprocess_features``, ``Attention`` with the ``alibi`` bias,
``Block``, ``CustomSequential``, ``AttentionalPooler``, ``VisionTransformer.forward_features``,
``forward_attn_pool`` and ``get_alibi``), ``configuration_titan.py`` (the sizes;
``TitanConfig`` sets ``attentional_pool="parallel"``) and ``modeling_titan.py``
(``encode_slide_from_patch_features`` = the vision encoder with ``no_proj=True``,
``encode_text``, ``zero_shot_classifier``, ``zero_shot``): the dense feature grid, the full
(1, heads, L, L) ALiBi bias from numpy distances, timm's ``Mlp`` in the blocks, the poolers in
the sequence-first layout. The text tower is open_clip's CoCa ``TextTransformer`` with CONCH's
(legacy) class-token mask and 128 positions (127 tokens + the class token); texts are
tokenized to 127 tokens and one padding place, the last dropped by ``encode_text``.

Every tensor of the reference is perturbed and saved as ``model.safetensors``; histobag loads
it through ``build_feature_extractor`` in float32 and is compared on generated bags of 2,600
tiles with gaps, a background (all-zero) tile and two tiles in one cell. Full-size key names
and shapes are compared on the meta device.
"""

from __future__ import annotations

import math
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import TextTransformer
from timm.layers import Mlp
from torch import nn

import histobag
from histobag.errors import (
    ExtractorArgumentError,
    IncompatibleBagsError,
    MissingDependencyError,
    WeightsError,
)
from histobag.slide_encoding import check_bags, zero_shot
from histobag_noncommercial import titan
from histobag_noncommercial.conch import ConchArch
from tests.noncommercial.test_conch import official_tokenize, write_tokenizer
from tests.parity import (
    assert_imports_no_heavy_modules,
    build_fp32,
    perturbed,
    registered_variant,
)
from tests.slide_bags import generated_bag

# Reduced sizes: 12 heads (ALiBi slopes of a count that is not a power of two), 2 blocks.
WIDTH, IN_DIM, DEPTH, HEADS = 96, 64, 2, 12
TEXT = {"text_width": 48, "text_layers": 2, "text_heads": 4, "vocab_size": 64 + 256}
EXTENT = 512
PROMPTS = {
    "tumor": ["an image of tumor tissue", "tumor"],
    "stroma": ["stroma of an image"],
    "lymph": ["lymphocytes, " * 60],  # longer than the 127-token context: truncated
}


# -- the official model, restated --------------------------------------------------------------


def preprocess_features(
    features: torch.Tensor, coords: torch.Tensor, patch_size_lv0: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dense (1, D, H, W) grid, its coordinates and the (1, H, W) tissue mask."""
    features = features.squeeze(0) if features.dim() == 3 else features
    coords = coords.squeeze(0) if coords.dim() == 3 else coords
    offset = coords.min(dim=0).values
    grid_coords = torch.floor_divide(coords - offset, patch_size_lv0)
    grid_coords = grid_coords - grid_coords.min(dim=0).values
    height, width = (grid_coords.max(dim=0).values + 1).tolist()
    feature_grid = torch.zeros((height, width, features.size(-1)))
    coords_grid = torch.zeros((height, width, 2), dtype=torch.int64)
    indices = grid_coords[:, 0] * width + grid_coords[:, 1]
    feature_grid.view(-1, features.size(-1)).index_add_(0, indices, features)
    coords_grid.view(-1, 2).index_add_(0, indices, coords)
    feature_grid = feature_grid.permute(2, 0, 1)
    bg_mask = torch.any(feature_grid != 0, dim=0)
    return feature_grid.unsqueeze(0), coords_grid.permute(2, 0, 1).unsqueeze(0), bg_mask[None]


def get_slopes(n: int) -> list[float]:
    if math.log2(n).is_integer():
        p = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [p * (p**i) for i in range(n)]
    nearest = 2 ** math.floor(math.log2(n))
    return get_slopes(nearest) + get_slopes(2 * nearest)[0::2][: n - nearest]


def get_alibi(num_heads: int, w: int, h: int, bg_mask: torch.Tensor) -> torch.Tensor:
    """(1, heads, L, L): zero row and column for the class token, -slope * distance else."""
    x, y = np.meshgrid(np.arange(w), np.arange(h), indexing="ij")
    x, y = x[bg_mask.squeeze(0).numpy()], y[bg_mask.squeeze(0).numpy()]
    points = np.stack([x.ravel(), y.ravel()], axis=1)
    dists = np.sqrt(np.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1))
    slopes = torch.tensor(get_slopes(num_heads), dtype=torch.float32).view(num_heads, 1, 1)
    n = dists.shape[-1]
    bias = torch.tensor(dists, dtype=torch.float32).view(1, n, n) * slopes * -1
    out = torch.zeros(1, num_heads, n + 1, n + 1)
    out[:, :, 1:, 1:] = bias
    return out


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = norm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_bias)
        return x + self.mlp(self.norm2(x))


class CustomSequential(nn.Module):
    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.modules_list = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        for module in self.modules_list:
            x = module(x, attn_bias)
        return x


class AttentionalPooler(nn.Module):
    """Batch of one: the queries expanded along the batch axis, sequence-first."""

    def __init__(self, d_model: int, n_head: int, n_queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=d_model, vdim=d_model)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_k(x).permute(1, 0, 2).contiguous()
        n = x.shape[1]
        q = self.ln_q(self.query)
        out, _ = self.attn(q.unsqueeze(1).expand(-1, n, -1), x, x, need_weights=False)
        return out.permute(1, 0, 2).contiguous()


class VisionTransformer(nn.Module):
    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        mlp_patch_embed_dim: int = 768,
        attn_pooler_queries: int = 128,
        attn_pooler_heads: int = 8,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.patch_embed = nn.Sequential(nn.Linear(mlp_patch_embed_dim, embed_dim), nn.GELU())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = CustomSequential(
            *[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.attn_pool = AttentionalPooler(embed_dim, attn_pooler_heads, attn_pooler_queries)
        self.attn_pool_contrastive = AttentionalPooler(embed_dim, attn_pooler_heads, 1)
        self.proj = nn.Parameter(embed_dim**-0.5 * torch.randn(embed_dim, embed_dim))

    def forward_features(self, x: torch.Tensor, bg_mask: torch.Tensor) -> torch.Tensor:
        _, _, w, h = x.shape
        x = x.flatten(2, 3).transpose(1, 2)
        attn_bias = get_alibi(self.num_heads, w, h, bg_mask).type(x.dtype)
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        keep = torch.cat((torch.ones((1, 1), dtype=torch.bool), bg_mask.view(1, -1)), dim=1)
        x = x[keep].unsqueeze(0)
        return self.norm(self.blocks(x, attn_bias))

    def forward(
        self, patch_features: torch.Tensor, patch_coords: torch.Tensor, patch_size_lv0: int
    ) -> torch.Tensor:
        """``forward(..., no_proj=True)``: the contrastive pool of the normalised tokens."""
        x, _, bg_mask = preprocess_features(patch_features, patch_coords, patch_size_lv0)
        x = self.forward_features(x, bg_mask)
        self.attn_pool(x)  # computed by the official "parallel" pooling, then unused
        return self.attn_pool_contrastive(x).squeeze(1)


class Titan(nn.Module):
    """``Titan`` (``modeling_titan.py``) with the given sizes."""

    def __init__(
        self,
        *,
        width: int = 768,
        depth: int = 6,
        heads: int = 12,
        in_dim: int = 768,
        text_layers: int = 12,
        text_width: int = 768,
        text_heads: int = 12,
        vocab_size: int = 32007,
    ) -> None:
        super().__init__()
        self.vision_encoder = VisionTransformer(
            embed_dim=width, depth=depth, num_heads=heads, mlp_patch_embed_dim=in_dim
        )
        # TitanTextConfig: context 128 (the class token's place included), CoCa class token.
        self.text_encoder = TextTransformer(
            context_length=127,
            vocab_size=vocab_size,
            width=text_width,
            heads=text_heads,
            layers=text_layers,
            output_dim=width,
            embed_cls=True,
            pad_id=0,
            correct_cls_mask=False,
            act_layer=nn.GELU,
            output_tokens=True,
        )

    def encode_slide_from_patch_features(
        self, patch_features: torch.Tensor, patch_coords: torch.Tensor, patch_size_lv0: int
    ) -> torch.Tensor:
        return self.vision_encoder(patch_features, patch_coords, patch_size_lv0)

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        latent, _ = self.text_encoder(input_ids[:, :-1])  # make space for the class token
        return F.normalize(latent, dim=-1) if normalize else latent

    def project_slide(self, slide_embedding: torch.Tensor) -> torch.Tensor:
        """``zero_shot``'s slide side: projected by ``vision_encoder.proj``, normalised."""
        return F.normalize(slide_embedding.float() @ self.vision_encoder.proj, dim=-1)


# -- histobag's reduced model and the saved checkpoint ------------------------------------------


SMALL = titan.TitanArch(
    in_dim=IN_DIM, width=WIDTH, depth=DEPTH, heads=HEADS, text=ConchArch(embed_dim=WIDTH, **TEXT)
)


def small_titan(spec: histobag.ExtractorSpec, **kwargs: Any) -> Any:
    """TITAN's factory at the reduced sizes."""
    return titan.titan_build(SMALL, **kwargs)


def reduced() -> Any:
    return registered_variant("titan", f"{__name__}:small_titan", suffix="-small")


def reference_small() -> Titan:
    return Titan(
        width=WIDTH,
        depth=DEPTH,
        heads=HEADS,
        in_dim=IN_DIM,
        text_layers=TEXT["text_layers"],
        text_width=TEXT["text_width"],
        text_heads=TEXT["text_heads"],
        vocab_size=TEXT["vocab_size"],
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Titan]:
    """(model.safetensors as on the Hub, the perturbed reference it holds)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = perturbed(reference_small(), seed=5)
    # perturb_ also moved the causal mask (a buffer not saved): rebuild it.
    reference.text_encoder.attn_mask = reference.text_encoder.build_causal_mask()
    path = tmp_path_factory.mktemp("titan") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    return path, reference


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CONCH-style byte-level BPE tokenizer saved as the repository holds TITAN's
    (tokenizer.json, tokenizer_config.json, special_tokens_map.json)."""
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("titan-tokenizer")
    file = write_tokenizer(folder)
    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(file),
        bos_token="<start_of_text>",
        eos_token="<end_of_text>",
        pad_token="<pad>",
    )
    file.unlink()
    fast.save_pretrained(str(folder))
    assert (folder / "tokenizer.json").is_file()
    return folder


@pytest.fixture(scope="module")
def extractor(saved: tuple[Path, Titan], tokenizer_dir: Path) -> titan.TitanExtractor:
    with reduced() as name:
        return build_fp32(name, saved[0], tokenizer=str(tokenizer_dir))


@pytest.fixture(scope="module")
def bag() -> tuple[np.ndarray, np.ndarray]:
    """A generated slide (2,600 tiles) with one all-zero (background) tile and one tile
    moved into another's cell, offset by a few pixels."""
    features, coords = generated_bag(2000, IN_DIM, extent_px=EXTENT, scale=2.0)
    features[11] = 0.0
    coords[20] = coords[21] + 3
    return features, coords


def official_embedding(reference: Titan, features: np.ndarray, coords: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return reference.encode_slide_from_patch_features(
            torch.from_numpy(features)[None], torch.from_numpy(coords)[None], EXTENT
        )[0]


def assert_close_to(ours: torch.Tensor, expected: torch.Tensor) -> float:
    """At most 1e-5 of the embedding's scale apart (absolute 1e-5 at scale ~1); returns the
    difference."""
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    diff = float((ours - expected).abs().max())
    assert diff <= 1e-5 * max(1.0, float(expected.abs().max()))
    assert float(expected.std()) > 0.05  # not collapsed
    return diff


# -- slide embeddings ---------------------------------------------------------------------------


def test_slide_embedding_matches_the_official_code(
    saved: tuple[Path, Titan], extractor: titan.TitanExtractor, bag: Any
) -> None:
    _, reference = saved
    features, coords = bag
    assert len(features) >= 2000
    expected = official_embedding(reference, features, coords)
    ours = extractor(features, coords, extent_px=EXTENT)
    assert ours.shape == (WIDTH,)
    assert_close_to(ours, expected)
    # Without extent_px, the grid pitch of the coordinates is taken: the tile side when
    # every tile is on the grid (the tile moved off it by 3 px makes the pitch 1 px).
    on_grid = np.delete(np.arange(len(coords)), 20)
    assert_close_to(
        extractor(features[on_grid], coords[on_grid]),
        official_embedding(reference, features[on_grid], coords[on_grid]),
    )
    # Another tile encoder's widths are refused before the model runs.
    with pytest.raises(ExtractorArgumentError, match=f"\\(N, {IN_DIM}\\)"):
        extractor(np.zeros((3, IN_DIM + 1), np.float32), coords[:3], extent_px=EXTENT)


def test_grid_of_a_40x_slide_and_unaligned_tiles(
    saved: tuple[Path, Titan], extractor: titan.TitanExtractor, bag: Any
) -> None:
    """Level-0 coordinates of a 40x slide (tile side 1024 at level 0) give the same grid;
    coordinates off the grid by a few pixels fall in the cells the official floor gives."""
    _, reference = saved
    features, coords = bag
    expected = official_embedding(reference, features, coords)
    assert_close_to(extractor(features, coords * 2, extent_px=2 * EXTENT), expected)
    jitter = np.random.default_rng(3).integers(0, 40, coords.shape)
    moved = coords + jitter
    with torch.inference_mode():
        official = reference.encode_slide_from_patch_features(
            torch.from_numpy(features)[None], torch.from_numpy(moved)[None], EXTENT
        )[0]
    assert_close_to(extractor(features, moved, extent_px=EXTENT), official)


def test_tile_grid_equals_the_dense_grid(bag: Any) -> None:
    features, coords = (torch.from_numpy(a) for a in bag)
    grid, _, mask = preprocess_features(features, coords, EXTENT)
    tokens, cells = titan.tile_grid(features, coords, EXTENT)
    dense = grid[0].permute(1, 2, 0)  # (H, W, D)
    assert torch.equal(tokens, dense[mask[0]])
    assert torch.equal(cells, mask[0].nonzero())  # row-major order of (x cell, y cell)
    assert len(tokens) == len(features) - 2  # the zero tile dropped, two tiles merged
    assert bool((tokens != 0).any(dim=1).all())


def test_alibi_slopes_and_bias_equal_the_official(bag: Any, monkeypatch: Any) -> None:
    for heads in (8, 12, 16, 6):
        assert titan.alibi_slopes(heads) == get_slopes(heads)
    features, coords = (torch.from_numpy(a) for a in bag)
    grid, _, mask = preprocess_features(features, coords, EXTENT)
    _, cells = titan.tile_grid(features, coords, EXTENT)
    slopes = torch.tensor(titan.alibi_slopes(HEADS))
    official = get_alibi(HEADS, grid.shape[2], grid.shape[3], mask)[0]
    cached = titan.AlibiBias(cells, slopes)
    assert cached.full is not None
    assert torch.equal(cached.rows(0, cached.length), official)
    # A slide too large to keep the whole bias: blocks of rows, built when asked for.
    monkeypatch.setattr(titan, "BIAS_CACHE_ELEMENTS", 0)
    monkeypatch.setattr(titan, "BIAS_BLOCK_ELEMENTS", HEADS * len(cells) * 300)
    blocked = titan.AlibiBias(cells, slopes)
    assert blocked.full is None and len(blocked.blocks()) > 5
    rows = torch.cat([blocked.rows(a, b) for a, b in blocked.blocks()], dim=1)
    assert torch.equal(rows, official)
    # A grid too wide for a table of its offsets: distances computed directly.
    monkeypatch.setattr(titan, "DISTANCE_TABLE_ELEMENTS", 0)
    direct = titan.AlibiBias(cells, slopes)
    assert direct.table is None
    assert torch.equal(torch.cat([direct.rows(a, b) for a, b in direct.blocks()], 1), official)


def test_blockwise_attention_gives_the_same_embedding(
    extractor: titan.TitanExtractor, bag: Any, monkeypatch: Any
) -> None:
    features, coords = bag
    whole = extractor(features, coords, extent_px=EXTENT)
    monkeypatch.setattr(titan, "BIAS_CACHE_ELEMENTS", 0)
    monkeypatch.setattr(titan, "BIAS_BLOCK_ELEMENTS", HEADS * len(features) * 700)
    blocks = extractor(features, coords, extent_px=EXTENT)
    assert float((blocks - whole).abs().max()) <= 1e-5


def test_without_the_text_tower(
    saved: tuple[Path, Titan], extractor: titan.TitanExtractor, bag: Any
) -> None:
    """text=False loads the same file without the text tower's tensors."""
    with reduced() as name:
        slide_only = build_fp32(name, saved[0], text=False)
    assert not any(k.startswith("text_encoder.") for k in slide_only.model.state_dict())
    features, coords = bag
    expected = extractor(features, coords, extent_px=EXTENT)
    assert torch.equal(slide_only(features, coords, extent_px=EXTENT), expected)
    with pytest.raises(ExtractorArgumentError, match="text=True"):
        slide_only.text_features(["tumor"])
    with pytest.raises(ExtractorArgumentError, match="text must be True or False"):
        histobag.build_feature_extractor("titan", weights="random", text="no")


# -- zero-shot ----------------------------------------------------------------------------------


def test_text_features_match_encode_text(
    saved: tuple[Path, Titan], extractor: titan.TitanExtractor, tokenizer_dir: Path
) -> None:
    from transformers import PreTrainedTokenizerFast

    _, reference = saved
    prompts = [p for group in PROMPTS.values() for p in group]
    tokens = official_tokenize(PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir)), prompts)
    assert tokens.shape == (4, 128) and int((tokens[3] != 0).sum()) == 127
    with torch.inference_mode():
        expected = reference.encode_text(tokens, normalize=True)
    ours = extractor.text_features(prompts)
    assert ours.shape == (4, WIDTH)
    assert float((ours - expected).abs().max()) <= 1e-5
    assert extractor.text_features([]).shape == (0, WIDTH)
    with pytest.raises(ExtractorArgumentError, match="list of strings"):
        extractor.text_features("tumor")


def test_zero_shot_is_the_official_classifier(
    saved: tuple[Path, Titan], extractor: titan.TitanExtractor, bag: Any
) -> None:
    """``zero_shot_classifier`` (per class the normalised mean of its normalised prompt
    embeddings) and ``zero_shot`` (the slide projected, normalised; softmax of the cosine
    similarities, no temperature)."""
    _, reference = saved
    features, coords = bag
    slides = torch.stack(
        [extractor(features[i::2], coords[i::2], extent_px=EXTENT) for i in range(2)]
    )
    assert extractor.logit_scale == 1.0
    projected = extractor.slide_to_text_space(slides)
    with torch.inference_mode():
        official = reference.project_slide(slides)
    assert float((projected - official).abs().max()) <= 1e-6
    classifier = torch.stack(
        [F.normalize(extractor.text_features(p).mean(dim=0), dim=-1) for p in PROMPTS.values()],
        dim=1,
    )
    expected = F.softmax(official @ classifier, dim=-1)
    result = zero_shot(extractor, slides, PROMPTS)
    assert list(result["classes"]) == list(PROMPTS)
    assert np.abs(result["probabilities"] - expected.numpy()).max() <= 1e-6
    with pytest.raises(ExtractorArgumentError, match=f"\\(S, {WIDTH}\\)"):
        extractor.slide_to_text_space(torch.zeros(2, WIDTH + 1))


def test_tokenizer_errors(saved: tuple[Path, Titan], tmp_path: Path, monkeypatch: Any) -> None:
    with reduced() as name:
        empty = build_fp32(name, saved[0], tokenizer=str(tmp_path))
    with pytest.raises(WeightsError, match=r"tokenizer\.json"):
        empty.text_features(["tumor"])
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"histobag-noncommercial\[text\]") as caught:
        titan.load_tokenizer(str(tmp_path))
    assert caught.value.extra == "text"


# -- what is listed, and what bags it takes -----------------------------------------------------


def test_spec() -> None:
    spec = histobag.extractor_info("titan")
    assert spec.pack == "histobag-noncommercial" and spec.kind == "tile_features"
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == (
        "MahmoodLab/TITAN",
        "model.safetensors",
        True,
    )
    assert spec.license == "CC-BY-NC-ND-4.0" and spec.num_features == 768
    needs = spec.slide_input
    assert (needs.tile_encoders, needs.tile_px, needs.magnification) == (("conch-v1.5",), 512, 20.0)
    assert spec.tile_encoder == "conch-v1.5"
    assert "Ding" in spec.citation and "request access" in spec.description
    assert spec.model_kwargs == ("text", "tokenizer")


def test_listing_imports_no_torch() -> None:
    assert_imports_no_heavy_modules("histobag_noncommercial.titan_specs", "torch", "timm")


def test_one_slide_at_a_time(extractor: titan.TitanExtractor) -> None:
    features = torch.ones(2, 3, IN_DIM)
    coords = torch.zeros(2, 3, 2, dtype=torch.long)
    with pytest.raises(ExtractorArgumentError, match="one slide at a time"):
        extractor.model(features, coords, EXTENT)


def test_bags_of_another_encoder_or_magnification_are_refused() -> None:
    needs = histobag.extractor_info("titan").slide_input
    uni = {"extractor": {"extractor": "uni"}, "tile_px": 512, "tile_um": 256.0}
    with pytest.raises(IncompatibleBagsError, match=r"uni features.*conch-v1\.5"):
        check_bags("titan", needs, uni)
    at_10x = {"extractor": {"extractor": "conch-v1.5"}, "tile_px": 512, "tile_um": 512.0}
    with pytest.raises(IncompatibleBagsError, match="10x"):
        check_bags("titan", needs, at_10x)
    fitting = {"extractor": {"extractor": "conch-v1.5"}, "tile_px": 512, "tile_um": 256.0}
    assert check_bags("titan", needs, fitting).mismatches == ()


def test_full_size_keys_and_shapes_equal_the_official() -> None:
    """The factory's model takes exactly the official model's tensors, full size."""
    with torch.device("meta"):
        official = Titan().state_dict()
        build = titan.build_titan(histobag.extractor_info("titan"))
    official.pop("text_encoder.attn_mask", None)  # a buffer the official model does not save
    own = build.module.state_dict()
    assert {k: tuple(v.shape) for k, v in own.items()} == {
        k: tuple(v.shape) for k, v in official.items()
    }
    assert "vision_encoder.blocks.modules_list.5.attn.qkv.weight" in own
    assert "vision_encoder.attn_pool.attn.in_proj_weight" in own
    assert tuple(own["vision_encoder.attn_pool.query"].shape) == (128, 768)
    assert tuple(own["text_encoder.positional_embedding"].shape) == (128, 768)
    assert tuple(own["text_encoder.token_embedding.weight"].shape) == (32007, 768)
    vision = sum(v.numel() for k, v in own.items() if k.startswith("vision_encoder."))
    text = sum(v.numel() for k, v in own.items() if k.startswith("text_encoder."))
    assert (round(vision / 1e6, 1), round(text / 1e6, 1)) == (48.5, 110.3)
    assert build.extractor_cls is titan.TitanExtractor and build.num_features == 768
