"""CONCH v1 and CONCH v1.5 against references assembled as the official code builds them.

CONCH v1 (``conch.open_clip_custom``, not on PyPI): the official ``conch_ViT-B-16.json`` CoCa
is rebuilt from its parts: timm's ``VisionTransformer`` trunk with the official arguments,
open_clip's ``AttentionalPooler`` (the class CONCH's own is taken from) for the contrastive and
captioning poolers, and open_clip's ``TextTransformer`` with CoCa's appended class token and
its legacy class-token mask. ``encode_image`` and ``encode_text`` are written out below as the
official model computes them. CONCH v1.5 (``CONCHVisionTower`` of MahmoodLab's TRIDENT / TITAN
code): timm's ``vit_large_patch16_224`` with LayerScale, the DINO-style bicubic interpolation
of its 14x14 position embeddings, and the query pooling computed by ``nn.MultiheadAttention``
from the published ``to_q``/``to_kv``/``to_out`` weights.

Every tensor of each reference is perturbed, saved as published (``pytorch_model.bin``,
``pytorch_model_vision.bin``), loaded through ``histobag.build_feature_extractor`` in float32
and compared on real histology tiles at reduced depth; the real factories' key names and
shapes are checked at full size on the meta device.
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import AttentionalPooler, TextTransformer
from timm.layers import resample_abs_pos_embed
from timm.models import VisionTransformer
from torch import nn

import histobag
from histobag.errors import ExtractorArgumentError, MissingDependencyError, WeightsError
from histobag.extractors.preprocess import build_transform
from histobag_noncommercial import conch
from tests.helpers import histology_tiles
from tests.parity import (
    assert_imports_no_heavy_modules,
    assert_parity,
    build_fp32,
    mismatch_message,
    perturbed,
    registered_variant,
    save_checkpoint,
    to_float,
)

TEST_DEPTH = 2
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEXTS = [
    "an H&E image of tumor tissue",
    "Lymphocytes.",
    "stroma with many fibroblasts, " * 40,  # longer than the 127-token context: truncated
]
WORDS = ["tumor", "stroma", "lymph", "ocytes", "tissue", "image", "of", "an"]


# -- CONCH v1: the official CoCa, assembled from timm and open_clip ---------------------------


def reference_conch(depth: int = 12, vocab: int = 32007) -> nn.Module:
    """``conch_ViT-B-16.json``'s CoCa (without the text decoder, which the published file
    lacks), with ``depth`` blocks in each tower and ``vocab`` tokens."""
    model = nn.Module()
    visual = nn.Module()
    # conch/open_clip_custom/coca_model.py: _build_vision_tower.
    visual.trunk = VisionTransformer(
        embed_dim=768,
        depth=depth,
        num_heads=12,
        mlp_ratio=4,
        img_size=448,
        patch_size=16,
        num_classes=0,
        dynamic_img_size=True,
    )
    visual.attn_pool_contrast = AttentionalPooler(512, 768, n_head=8, n_queries=1)
    visual.ln_contrast = nn.LayerNorm(512)
    visual.proj_contrast = nn.Parameter(torch.randn(512, 512) * 768**-0.5)
    visual.attn_pool_caption = AttentionalPooler(768, 768, n_head=8, n_queries=256)
    visual.ln_caption = nn.LayerNorm(768)
    model.visual = visual
    # text_cfg: context 128 (127 tokens + the appended class token), width 768, 12 heads.
    model.text = TextTransformer(
        context_length=127,
        vocab_size=vocab,
        width=768,
        heads=12,
        layers=depth,
        output_dim=512,
        embed_cls=True,
        pad_id=0,
        correct_cls_mask=False,  # CONCH's (legacy) class-token mask
        act_layer=nn.GELU,
    )
    model.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    return model


def official_encode_image(
    model: nn.Module, images: torch.Tensor, *, proj_contrast: bool, normalize: bool
) -> torch.Tensor:
    """``CoCa.encode_image``: the trunk's tokens pooled by one query, LayerNorm, projection."""
    visual = model.visual
    with torch.inference_mode():
        pooled = visual.ln_contrast(
            visual.attn_pool_contrast(visual.trunk.forward_features(images))[:, 0]
        )
        if proj_contrast:
            pooled = pooled @ visual.proj_contrast
        return F.normalize(pooled, dim=-1) if normalize else pooled


def official_tokenize(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """``conch.open_clip_custom.tokenize``: 127 tokens, then one padding place (B, 128)."""
    tokens = tokenizer(  # batch_encode_plus, which transformers 5 renamed
        texts,
        max_length=127,
        add_special_tokens=True,
        return_token_type_ids=False,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )
    return F.pad(tokens["input_ids"], (0, 1), value=tokenizer.pad_token_id)


def official_encode_text(
    model: nn.Module, tokens: torch.Tensor, *, normalize: bool
) -> torch.Tensor:
    """``CoCa.encode_text(text, normalize, embed_cls=True)``: the last place makes room for
    the class token."""
    with torch.inference_mode():
        latent = model.text(tokens[:, :-1])
        return F.normalize(latent, dim=-1) if normalize else latent


def write_tokenizer(folder: Path) -> Path:
    """A tiny byte-level BPE tokenizer built like CONCH's (uncased, accents stripped, the
    start/end tokens added, <pad> = 0), saved as the official file name."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel

    specials = ["<pad>", "<start_of_text>", "<end_of_text>"]
    alphabet = sorted(ByteLevel.alphabet())
    merges: list[tuple[str, str]] = []
    vocab = {token: i for i, token in enumerate([*specials, *alphabet])}
    for word in WORDS:  # merge each word's letters left to right, "Ġ" + word last
        pieces = list("Ġ" + word)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = [pair[0] + pair[1], *pieces[2:]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=list(dict.fromkeys(merges))))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>",
        special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)],
    )
    tokenizer.add_special_tokens(specials)
    path = folder / conch.TOKENIZER_FILE
    tokenizer.save(str(path))
    return path


def official_tokenizer(path: Path) -> Any:
    """``conch.open_clip_custom.get_tokenizer()`` on the file at ``path``."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        bos_token="<start_of_text>",
        eos_token="<end_of_text>",
        pad_token="<pad>",
    )


def small_conch(spec: histobag.ExtractorSpec, **kwargs: Any) -> Any:
    """CONCH's factory at reduced depth with the tiny vocabulary (see :func:`reduced`)."""
    arch = conch.ConchArch(layers=TEST_DEPTH, text_layers=TEST_DEPTH, vocab_size=VOCAB_SIZE)
    return conch.build_conch_model(arch, **kwargs)


def reduced(name: str = "conch") -> contextlib.AbstractContextManager[str]:
    """Register a spec under a new name whose factory builds the reduced model."""
    factory = "small_conch" if name == "conch" else "small_conch15"
    return registered_variant(name, f"{__name__}:{factory}", suffix=f"-depth{TEST_DEPTH}")


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("conch-tokenizer"))


VOCAB_SIZE = 64 + 256  # room for the tiny tokenizer's tokens


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """(pytorch_model.bin as on the Hub, the perturbed reference it holds)."""
    torch.manual_seed(0)
    reference = perturbed(reference_conch(TEST_DEPTH, VOCAB_SIZE), seed=3)
    # perturb_ also moved the causal mask (a buffer not saved): rebuild it.
    reference.text.attn_mask = reference.text.build_causal_mask()
    path = tmp_path_factory.mktemp("conch") / "pytorch_model.bin"
    return save_checkpoint(reference.state_dict(), path), reference


def reference_batch(tiles: np.ndarray) -> torch.Tensor:
    """``image_transform(448)`` of the official code, on float tensors (PIL's rounding to uint8
    is checked apart): resize 448 bicubic (antialiased, as PIL), crop 448, OpenAI CLIP norm."""
    from torchvision import transforms as T

    transform = T.Compose(
        [
            T.Resize(448, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(448),
            T.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )
    return transform(to_float(tiles))


@pytest.fixture(scope="module")
def extractors(saved: tuple[Path, nn.Module], tokenizer_file: Path) -> dict[str, Any]:
    """The reduced CONCH loaded from the published file: as by default, and in the joint
    image-text space (projected, normalised), both with the tokenizer file."""
    path, _ = saved
    with reduced() as name:
        return {
            "default": build_fp32(name, path, tokenizer=str(tokenizer_file)),
            "joint": build_fp32(
                name, path, proj_contrast=True, normalize=True, tokenizer=str(tokenizer_file)
            ),
        }


@pytest.mark.parametrize("kind", ["default", "joint"])
def test_image_features_match_encode_image(
    saved: tuple[Path, nn.Module], extractors: dict[str, Any], kind: str
) -> None:
    """Default: ``encode_image(x, proj_contrast=False, normalize=False)``, the model card's
    features; joint: ``encode_image(x)`` (projected, normalised)."""
    _, reference = saved
    tiles = histology_tiles(2, 256)
    joint = kind == "joint"
    expected = official_encode_image(
        reference, reference_batch(tiles), proj_contrast=joint, normalize=joint
    )
    features = extractors[kind](tiles)
    assert features.shape == (2, 512)
    assert_parity(features, expected, min_std=0.01 if joint else 0.1)


def test_unresized_tiles_interpolate_position_embeddings(saved: tuple[Path, nn.Module]) -> None:
    """224 px tiles fed as they are: timm's interpolation of the 28x28 position grid, as the
    official trunk (dynamic_img_size)."""
    path, reference = saved
    tiles = histology_tiles(2, 224)
    with reduced() as name:
        extractor = build_fp32(name, path, resize=False, center_crop=False)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (OPENAI_MEAN, OPENAI_STD))
    batch = (to_float(tiles) - mean) / std
    expected = official_encode_image(reference, batch, proj_contrast=False, normalize=False)
    assert_parity(extractor(tiles), expected)


@pytest.mark.parametrize("kind", ["default", "joint"])
def test_text_features_match_encode_text(
    saved: tuple[Path, nn.Module], extractors: dict[str, Any], tokenizer_file: Path, kind: str
) -> None:
    """``encode_text(tokenize(get_tokenizer(), texts), normalize)``: always projected,
    normalised as the extractor's image features are."""
    _, reference = saved
    tokenizer = official_tokenizer(tokenizer_file)
    tokens = official_tokenize(tokenizer, TEXTS)
    assert tokens.shape == (3, 128)
    assert int((tokens[2] != 0).sum()) == 127  # the long text filled the context
    assert int((tokens[1] != 0).sum()) <= 10  # the short one is mostly padding
    normalize = kind == "joint"
    expected = official_encode_text(reference, tokens, normalize=normalize)
    features = extractors[kind].text_features(TEXTS)
    assert features.shape == (3, 512)
    assert_parity(features, expected, min_std=0.01 if normalize else 0.1)
    assert extractors[kind].text_features([]).shape == (0, 512)


def test_tokenizer_from_its_folder_and_the_conch_package(
    saved: tuple[Path, nn.Module],
    extractors: dict[str, Any],
    tokenizer_file: Path,
    tmp_path: Path,
    monkeypatch: Any,
) -> None:
    path, _ = saved
    expected = extractors["default"].text_features(TEXTS)
    # An installed official package: conch/open_clip_custom/tokenizers/<file>.
    package = tmp_path / "site" / "conch"
    (package / "open_clip_custom" / "tokenizers").mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    target = package / "open_clip_custom" / "tokenizers" / conch.TOKENIZER_FILE
    target.write_bytes(tokenizer_file.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert conch.installed_tokenizer() == target
    assert "conch" not in sys.modules  # found without importing it
    with reduced() as name:
        by_folder = build_fp32(name, path, tokenizer=str(tokenizer_file.parent))
        by_package = build_fp32(name, path)
    assert torch.equal(by_folder.text_features(TEXTS), expected)
    assert torch.equal(by_package.text_features(TEXTS), expected)


def test_missing_tokenizer_names_the_official_package(
    saved: tuple[Path, nn.Module], tmp_path: Path, monkeypatch: Any
) -> None:
    path, _ = saved
    monkeypatch.setattr(conch, "installed_tokenizer", lambda: None)
    with reduced() as name:
        extractor = build_fp32(name, path)
        with pytest.raises(MissingDependencyError, match=r"github\.com/mahmoodlab/CONCH") as caught:
            extractor.text_features(["tumor"])
        assert caught.value.module == "conch"
        empty = build_fp32(name, path, tokenizer=str(tmp_path))
        with pytest.raises(WeightsError, match=conch.TOKENIZER_FILE):
            empty.text_features(["tumor"])
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"histobag-noncommercial\[text\]") as caught:
        conch.load_tokenizer(str(tmp_path))
    assert caught.value.extra == "text"


def test_text_features_reject_a_string(extractors: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="list of strings"):
        extractors["default"].text_features("tumor")


def test_flags_must_be_booleans() -> None:
    with pytest.raises(ExtractorArgumentError, match="proj_contrast"):
        histobag.build_feature_extractor("conch", weights="random", proj_contrast="yes")


def test_nested_and_prefixed_checkpoints_load_the_same(
    saved: tuple[Path, nn.Module], extractors: dict[str, Any], tmp_path: Path
) -> None:
    """The official reader unwraps ``{'state_dict': ...}`` and a DataParallel ``module.``
    prefix, and loads non-strictly: a decoder left in the file is ignored."""
    path, _ = saved
    state = torch.load(path, weights_only=True)
    state["text_decoder.ln_final.weight"] = torch.ones(768)
    prefixed = {f"module.{key}": value for key, value in state.items()}
    nested = save_checkpoint(prefixed, tmp_path / "pytorch_model.bin", nest="state_dict")
    with reduced() as name:
        loaded = build_fp32(name, nested).model.state_dict()
    expected = extractors["default"].model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in expected)


def test_position_embeddings_of_another_grid_are_resized(
    saved: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    """A checkpoint with a 14x14 grid is resized to the model's 28x28 on load (bilinear, no
    antialiasing), as the official ``resize_pos_embed``."""
    path, _ = saved
    state = torch.load(path, weights_only=True)
    small = resample_abs_pos_embed(
        state["visual.trunk.pos_embed"], new_size=[14, 14], num_prefix_tokens=1
    )
    state["visual.trunk.pos_embed"] = small
    checkpoint = save_checkpoint(state, tmp_path / "pytorch_model.bin")
    official = resample_abs_pos_embed(
        small, new_size=[28, 28], num_prefix_tokens=1, interpolation="bilinear", antialias=False
    )
    with reduced() as name:
        loaded = build_fp32(name, checkpoint).model.visual.trunk.pos_embed
    assert loaded.shape == (1, 785, 768)
    assert torch.equal(loaded, official)


def test_missing_projection_is_reported(saved: tuple[Path, nn.Module], tmp_path: Path) -> None:
    state = torch.load(saved[0], weights_only=True)
    del state["visual.proj_contrast"]
    with reduced() as name:
        message = mismatch_message(name, tmp_path / "pytorch_model.bin", state)
    assert "visual.proj_contrast" in message


def test_full_size_checkpoint_layout() -> None:
    """The real factory takes every tensor of a full-size CONCH checkpoint but the captioning
    pooler's, with the same shapes."""
    with torch.device("meta"):
        hub = reference_conch().state_dict()
        build = conch.build_conch(histobag.extractor_info("conch"))
    assert "visual.trunk.blocks.11.attn.qkv.weight" in hub
    assert "text.transformer.resblocks.11.attn.in_proj_weight" in hub
    assert tuple(hub["visual.trunk.pos_embed"].shape) == (1, 785, 768)
    adapted = build.adapt_state_dict(hub)
    own = build.module.state_dict()
    assert {k: tuple(v.shape) for k, v in adapted.items()} == {
        k: tuple(v.shape) for k, v in own.items()
    }
    dropped = set(hub) - set(adapted)
    assert dropped and all(
        k.startswith("visual.attn_pool_caption.") or k.startswith("visual.ln_caption.")
        for k in dropped
    )
    assert build.extractor_cls is conch.ConchExtractor
    assert build.input_multiple == 16


# -- CONCH v1.5: CONCHVisionTower -------------------------------------------------------------


class ReferencePool(nn.Module):
    """The published pooler's tensors (``query``, ``ln_k``, ``ln_q``, ``to_q``, ``to_kv``,
    ``to_out``); ``forward`` computes it with ``nn.MultiheadAttention``."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 768))
        self.ln_k = nn.LayerNorm(1024)
        self.ln_q = nn.LayerNorm(768)
        self.to_q = nn.Linear(768, 768, bias=False)
        self.to_kv = nn.Linear(1024, 1536, bias=False)
        self.to_out = nn.Linear(768, 768, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        attention = nn.MultiheadAttention(
            768, 8, kdim=1024, vdim=1024, bias=False, batch_first=True
        )
        with torch.no_grad():
            attention.q_proj_weight.copy_(self.to_q.weight)
            attention.k_proj_weight.copy_(self.to_kv.weight[:768])
            attention.v_proj_weight.copy_(self.to_kv.weight[768:])
            attention.out_proj.weight.copy_(self.to_out.weight)
        keys = self.ln_k(tokens)
        query = self.ln_q(self.query).expand(tokens.shape[0], -1, -1)
        return attention.eval()(query, keys, keys, need_weights=False)[0]


def reference_conch15(depth: int = 24) -> nn.Module:
    """``CONCHVisionTower``: ``vit_large`` (224 px grid, LayerScale), pooler, LayerNorm."""
    import timm

    model = nn.Module()
    model.trunk = timm.create_model(
        "vit_large_patch16_224", pretrained=False, num_classes=0, init_values=1.0, depth=depth
    )
    model.attn_pool_contrast = ReferencePool()
    model.ln_contrast = nn.LayerNorm(768)
    return model


def official_conch15(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``CONCHVisionTower.forward``: the trunk with the position grid interpolated by
    ``F.interpolate(scale_factor=(side + 0.1) / 14, mode='bicubic')`` unless the input is its
    own 224 px, the pooled query, LayerNorm."""
    trunk = model.trunk
    with torch.inference_mode():
        x = trunk.patch_embed.proj(images).flatten(2).transpose(1, 2)
        rows, cols = images.shape[2] // 16, images.shape[3] // 16
        x = torch.cat([trunk.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        pos = trunk.pos_embed
        if rows * cols != 196 or rows != cols:
            grid = pos[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(
                grid, scale_factor=((rows + 0.1) / 14, (cols + 0.1) / 14), mode="bicubic"
            )
            assert grid.shape[-2:] == (rows, cols)
            pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], 1)
        x = trunk.norm(trunk.blocks(x + pos))
        return model.ln_contrast(model.attn_pool_contrast(x)[:, 0])


def small_conch15(spec: histobag.ExtractorSpec) -> Any:
    """CONCH v1.5's factory at reduced depth (see :func:`reduced`)."""
    return conch.build_conch15_model(conch.Conch15Arch(layers=TEST_DEPTH))


@pytest.fixture(scope="module")
def saved15(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """(pytorch_model_vision.bin as on the Hub, the perturbed reference it holds)."""
    torch.manual_seed(1)
    reference = perturbed(reference_conch15(TEST_DEPTH), seed=4)
    gammas = [p for k, p in reference.named_parameters() if k.endswith(".gamma")]
    assert len(gammas) == 2 * TEST_DEPTH  # LayerScale after attention and after the MLP
    path = tmp_path_factory.mktemp("conch15") / "pytorch_model_vision.bin"
    return save_checkpoint(reference.state_dict(), path), reference


def imagenet_batch(tiles: np.ndarray, size: int | None = 448) -> torch.Tensor:
    """The official v1.5 transform on float tensors: resize 448 bilinear (antialiased, as PIL),
    crop 448, ImageNet norm; ``size=None`` normalises only."""
    from torchvision import transforms as T

    steps: list[Any] = []
    if size:
        steps = [T.Resize(size, interpolation=T.InterpolationMode.BILINEAR, antialias=True)]
        steps.append(T.CenterCrop(size))
    return T.Compose([*steps, T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(to_float(tiles))


def test_conch15_matches_official_tower(saved15: tuple[Path, nn.Module]) -> None:
    path, reference = saved15
    tiles = histology_tiles(1, 512)
    with reduced("conch-v1.5") as name:
        extractor = build_fp32(name, path)
    features = extractor(tiles)
    assert features.shape == (1, 768)
    assert_parity(features, official_conch15(reference, imagenet_batch(tiles)))


@pytest.mark.parametrize("side", [224, 320])
def test_conch15_unresized_tiles(saved15: tuple[Path, nn.Module], side: int) -> None:
    """At 224 px the stored grid is used as it is (timm's own forward agrees); at 320 px it is
    interpolated like at 448."""
    path, reference = saved15
    tiles = histology_tiles(2, side)
    with reduced("conch-v1.5") as name:
        extractor = build_fp32(name, path, resize=False, center_crop=False)
    batch = imagenet_batch(tiles, None)
    features = extractor(tiles)
    assert_parity(features, official_conch15(reference, batch))
    if side == 224:
        with torch.inference_mode():
            tokens = reference.trunk.forward_features(batch)
            timm_pooled = reference.ln_contrast(reference.attn_pool_contrast(tokens)[:, 0])
        assert_parity(features, timm_pooled)


def test_conch15_checkpoint_of_another_grid_is_resized(
    saved15: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    """A 28x28 grid in the file is resized to the model's 14x14 on load (bilinear, no
    antialiasing), as the official ``create_model_from_pretrained``."""
    path, _ = saved15
    state = torch.load(path, weights_only=True)
    original = state["trunk.pos_embed"]
    state["trunk.pos_embed"] = resample_abs_pos_embed(original, [28, 28], num_prefix_tokens=1)
    checkpoint = save_checkpoint(state, tmp_path / "pytorch_model_vision.bin")
    with reduced("conch-v1.5") as name:
        extractor = build_fp32(name, checkpoint)
    loaded = extractor.model.trunk.pos_embed
    expected = resample_abs_pos_embed(
        state["trunk.pos_embed"], [14, 14], num_prefix_tokens=1, interpolation="bilinear",
        antialias=False,
    )  # fmt: skip
    assert torch.equal(loaded, expected)


def test_conch15_wrong_key_is_named(saved15: tuple[Path, nn.Module], tmp_path: Path) -> None:
    state = torch.load(saved15[0], weights_only=True)
    state["attn_pool_contrast.to_k.weight"] = state.pop("attn_pool_contrast.to_kv.weight")
    with reduced("conch-v1.5") as name:
        message = mismatch_message(name, tmp_path / "pytorch_model_vision.bin", state)
    assert "attn_pool_contrast.to_k.weight" in message


def test_conch15_full_size_checkpoint_layout() -> None:
    with torch.device("meta"):
        reference = reference_conch15()
        build = conch.build_conch_v1_5(histobag.extractor_info("conch-v1.5"))
    hub = reference.state_dict()
    assert tuple(hub["trunk.pos_embed"].shape) == (1, 197, 1024)
    assert {k: tuple(v.shape) for k, v in build.adapt_state_dict(hub).items()} == {
        k: tuple(v.shape) for k, v in build.module.state_dict().items()
    }
    n_params = sum(p.numel() for p in reference.trunk.parameters())
    assert n_params == pytest.approx(303.3e6, rel=0.005)  # ViT-L/16


# -- what the pack lists ------------------------------------------------------------------------


def official_pil_pipeline(name: str) -> Any:
    """The official transform of ``name``, on PIL images."""
    from torchvision import transforms as T

    if name == "conch":
        resize = T.Resize(448, interpolation=T.InterpolationMode.BICUBIC)
        norm = T.Normalize(OPENAI_MEAN, OPENAI_STD)
    else:
        resize = T.Resize(448, interpolation=T.InterpolationMode.BILINEAR)
        norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    return T.Compose([resize, T.CenterCrop(448), T.ToTensor(), norm])


@pytest.mark.parametrize("name", ["conch", "conch-v1.5"])
@pytest.mark.parametrize("side", [224, 256, 512])
def test_preprocessing_matches_official_pil_pipeline(name: str, side: int) -> None:
    """histobag's on-device transform against the official one on PIL images, up to PIL's
    rounding to uint8; 224 and 256 px tiles are upsampled, 512 px ones downsampled."""
    from PIL import Image

    tiles = histology_tiles(2, side)
    pipeline = official_pil_pipeline(name)
    expected = torch.stack([pipeline(Image.fromarray(tile)) for tile in tiles])
    batch = torch.from_numpy(tiles).permute(0, 3, 1, 2)
    ours = build_transform(histobag.extractor_info(name).preprocessing)(batch)
    assert ours.shape == expected.shape == (2, 3, 448, 448)
    diff = (ours - expected).abs()
    assert float(diff.mean()) < 0.007
    assert float(diff.max()) < 0.06


@pytest.mark.parametrize(
    ("name", "repo", "filename", "features", "author"),
    [
        ("conch", "MahmoodLab/CONCH", "pytorch_model.bin", 512, "Lu"),
        ("conch-v1.5", "MahmoodLab/conchv1_5", "pytorch_model_vision.bin", 768, "Ding"),
    ],
)
def test_spec(name: str, repo: str, filename: str, features: int, author: str) -> None:
    spec = histobag.extractor_info(name)
    assert spec.pack == "histobag-noncommercial"
    assert spec.license == "CC-BY-NC-ND-4.0"
    assert spec.license_url == "https://creativecommons.org/licenses/by-nc-nd/4.0/"
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == (repo, filename, True)
    assert (spec.num_features, spec.input_size) == (features, 448)
    assert f"request access on https://huggingface.co/{repo}" in spec.description
    assert author in spec.citation and spec.citation.count("{") == spec.citation.count("}")


def test_aliases_and_kwargs() -> None:
    assert histobag.extractor_info("conch_v1").name == "conch"
    assert histobag.extractor_info("conch_v15").name == "conch-v1.5"
    assert histobag.extractor_info("conch").model_kwargs == (
        "proj_contrast",
        "normalize",
        "tokenizer",
    )
    assert histobag.extractor_info("conch-v1.5").model_kwargs == ()


def test_listing_imports_no_torch() -> None:
    assert_imports_no_heavy_modules("histobag_noncommercial.conch_specs", "torch", "timm")
