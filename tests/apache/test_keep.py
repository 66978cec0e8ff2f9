"""KEEP's image branch against the official ``KEEPModel`` structure (timm ViT + head + BERT).

The reference below is written from the published ``modeling_keep.py``: timm's ViT-L/16 with
LayerScale, a Linear-GELU-Linear head, ``encode_image`` L2-normalising the projection, and a
transformers ``BertModel`` text tower whose tensors the checkpoint also holds. A perturbed copy
(two blocks, a tiny BERT) is saved flat as ``model.safetensors``, loaded through
``histobag.build_feature_extractor`` and compared on real histology tiles; the full-size layout
is compared on the meta device.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

import histobag
from histobag.errors import CheckpointMismatchError, WeightsError
from histobag_apache import keep
from tests.helpers import histology_tiles
from tests.parity import (
    assert_imports_no_heavy_modules,
    assert_parity,
    build_fp32,
    card_preprocessing_gap,
    perturbed,
    registered_variant,
    to_float,
)

TEST_DEPTH = 2
#: The published config.json's vision arguments, written out apart from the pack's module.
CARD_VIT = dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True)
TINY_BERT = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=64, max_position_embeddings=256,
)  # fmt: skip
#: A tiny WordPiece vocabulary; the model card tokenises to 256 tokens.
VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "an", "h", "&", "e", "image", "of", "tumor",
    "tissue", "normal", ".", "breast", "invasive", "carcinoma", "lymph", "##ocytes", "stroma",
]  # fmt: skip
TEXTS = [
    "an H&E image of breast invasive carcinoma.",
    "an H&E image of normal tissue.",
    "Lymphocytes " * 300,  # longer than 256 tokens: truncated
]


class OfficialKEEP(nn.Module):
    """``KEEPModel`` as published: ``visual``, ``visual_head``, ``text`` and ``logit_scale``."""

    def __init__(self, depth: int | None = None, bert: dict[str, Any] | None = None) -> None:
        super().__init__()
        kwargs = CARD_VIT if depth is None else {**CARD_VIT, "depth": depth}
        self.visual = timm.create_model("vit_large_patch16_224", pretrained=False, **kwargs)
        self.visual_head = nn.Sequential(nn.Linear(1024, 768), nn.GELU(), nn.Linear(768, 768))
        self.text = transformers.BertModel(transformers.BertConfig(**(bert or {})))
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.04))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.visual_head(self.visual(images)), dim=-1)


def card_transform(*, pil: bool) -> Any:
    """The model card's torchvision pipeline, on PIL images or float tensors."""
    steps: list[Any] = [
        T.Resize(224, interpolation=InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop((224, 224)),
    ]
    if pil:
        steps.append(T.ToTensor())
    return T.Compose([*steps, T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


def small_keep(spec: histobag.ExtractorSpec, *, tokenizer: str | None = None) -> Any:
    """KEEP's factory at reduced depth (registered by :func:`reduced`)."""
    return keep.build_keep_image(depth=TEST_DEPTH, tokenizer=tokenizer)


def reduced() -> contextlib.AbstractContextManager[str]:
    return registered_variant("keep", f"{__name__}:small_keep", suffix=f"-depth{TEST_DEPTH}")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, OfficialKEEP]:
    """(model.safetensors as on the Hub, the perturbed reference it holds)."""
    torch.manual_seed(0)
    reference = perturbed(OfficialKEEP(TEST_DEPTH, TINY_BERT), seed=3)
    gammas = [p.detach() for k, p in reference.named_parameters() if k.endswith(".gamma")]
    assert len(gammas) == 2 * TEST_DEPTH and min(float(g.abs().mean()) for g in gammas) > 1e-3
    folder = tmp_path_factory.mktemp("keep")
    path = folder / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    write_text_files(folder)
    return path, reference


def write_text_files(folder: Path) -> None:
    """vocab.txt, tokenizer_config.json and config.json (with the text tower's sizes), as the
    Hub repository holds them."""
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), encoding="utf-8")
    text_config = {**TINY_BERT, "hidden_act": "gelu", "position_embedding_type": "absolute"}
    config = {"model_type": "keep", "projection_dim": 768, "text_config": text_config}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


def reference_text(reference: OfficialKEEP, texts: list[str], folder: Path) -> torch.Tensor:
    """The model card's ``AutoTokenizer.from_pretrained(...)``, ``tokenizer(...,
    max_length=256, padding="max_length")`` and ``encode_text``."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    tokens = tokenizer(
        texts, max_length=256, padding="max_length", truncation=True, return_tensors="pt"
    )
    with torch.inference_mode():
        return nn.functional.normalize(reference.text(**tokens).pooler_output, dim=-1)


def test_text_features_match_encode_text(saved: Any) -> None:
    path, reference = saved
    with reduced() as name:
        extractor = build_fp32(name, path)
    ours = extractor.text_features(TEXTS)
    expected = reference_text(reference, TEXTS, path.parent)
    assert ours.shape == (3, TINY_BERT["hidden_size"]) and ours.dtype == torch.float32
    assert_parity(ours, expected, min_std=0.01)
    assert extractor.text_source == str(path.parent.resolve())
    assert extractor.tokenizer.tokenize("Lymphocytes") == ["lymph", "##ocytes"]


def test_text_tower_from_a_legacy_bin(saved: Any, tmp_path: Path) -> None:
    """pytorch_model.bin with the position_ids buffer older transformers saved."""
    path, reference = saved
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    state["text.embeddings.position_ids"] = torch.arange(256)[None]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with reduced() as name:
        extractor = build_fp32(name, tmp_path / "pytorch_model.bin", tokenizer=str(path.parent))
    assert extractor.dump_config()["kwargs"]["tokenizer"] == str(path.parent)
    expected = reference_text(reference, TEXTS[:2], path.parent)
    assert_parity(extractor.text_features(TEXTS[:2]), expected, min_std=0.01)


def test_text_needs_its_files(saved: Any, tmp_path: Path) -> None:
    path, _ = saved
    shutil.copy(path, tmp_path / "model.safetensors")
    with reduced() as name:
        lonely = build_fp32(name, tmp_path / "model.safetensors")
        with pytest.raises(WeightsError, match="tokenizer="):
            lonely.text_features(["tumor"])
        with pytest.raises(TypeError, match="list of strings"):
            lonely.text_features("tumor")
    image_only = {k: v for k, v in load_file(path).items() if not k.startswith(("text.", "logit"))}
    save_file(image_only, tmp_path / "image.safetensors")
    with reduced() as name:
        extractor = build_fp32(name, tmp_path / "image.safetensors", tokenizer=str(path.parent))
        with pytest.raises(WeightsError, match="no text"):
            extractor.text_features(["tumor"])


@pytest.mark.parametrize("tile_px", [224, 256, 512])
def test_embeddings_match_encode_image(saved: Any, tile_px: int) -> None:
    path, reference = saved
    with reduced() as name:
        extractor = build_fp32(name, path)
    tiles = histology_tiles(2, tile_px, seed=tile_px)
    ours = extractor(tiles)
    with torch.inference_mode():
        expected = reference.encode_image(card_transform(pil=False)(to_float(tiles)))
    assert ours.shape == (2, 768) and extractor.num_features == 768
    # Unit vectors: their spread is small, so the collapse check uses a lower bound.
    assert_parity(ours, expected, min_std=0.01)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_unresized_tiles_interpolate_position_embeddings(saved: Any) -> None:
    path, reference = saved
    with reduced() as name:
        extractor = build_fp32(name, path, resize=False, center_crop=False)
    tiles = histology_tiles(2, 112)
    batch = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(to_float(tiles))
    with torch.inference_mode():
        expected = reference.encode_image(batch)
    assert_parity(extractor(tiles), expected, min_std=0.01)


def test_wrong_key_is_named(saved: Any, tmp_path: Path) -> None:
    state = load_file(saved[0])
    state["visual_head.1.weight"] = state.pop("visual_head.2.weight")
    save_file(state, tmp_path / "model.safetensors")
    with reduced() as name, pytest.raises(CheckpointMismatchError, match="visual_head"):
        build_fp32(name, tmp_path / "model.safetensors")


@pytest.mark.parametrize("tile_px", [224, 256, 512])
def test_preprocessing_matches_card_pipeline(tile_px: int) -> None:
    diff, on_tensors = card_preprocessing_gap("keep", card_transform, tile_px, 224)
    if tile_px == 224:  # nothing resampled
        assert float(diff.max()) <= 1e-6
    else:
        assert float(diff.mean()) < 0.007 and float(diff.max()) < 0.06
    assert on_tensors <= 1e-4  # on tensors, the card's pipeline and ours agree


def test_full_size_checkpoint_layout() -> None:
    """On the meta device: the real factory accepts every image tensor of a full-size KEEP
    checkpoint (BERT-base text tower included) and nothing else is expected."""
    spec = histobag.extractor_info("keep")
    with torch.device("meta"):
        official = OfficialKEEP()
        build = spec.load_factory()(spec)
    hub = official.state_dict()
    assert any(key.startswith("text.encoder.layer.11.") for key in hub)
    adapted = build.adapt_state_dict(hub)
    own = build.module.state_dict()
    assert {k: tuple(v.shape) for k, v in adapted.items()} == {
        k: tuple(v.shape) for k, v in own.items()
    }
    n_params = sum(p.numel() for p in official.visual.parameters())
    assert n_params == pytest.approx(303.3e6, rel=0.005)  # ViT-L/16


def test_spec() -> None:
    spec = histobag.extractor_info("keep")
    assert spec.pack == "histobag-apache"
    assert (spec.license, spec.license_url) == ("MIT", "https://huggingface.co/Astaxanthin/KEEP")
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == (
        "Astaxanthin/KEEP",
        "model.safetensors",
        False,
    )
    assert (spec.num_features, spec.input_size) == (768, 224)
    assert "Zhou" in spec.citation and spec.citation.count("{") == spec.citation.count("}")


def test_tokenizer_needs_transformers(saved: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from histobag.errors import HistobagError

    with reduced() as name:
        extractor = build_fp32(name, saved[0])
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(HistobagError, match="pip install transformers"):
        extractor.text_features(["tumor"])


def test_listing_imports_no_torch() -> None:
    assert_imports_no_heavy_modules("histobag_apache.keep_specs", "torch", "timm", "transformers")
