"""PLIP (transformers CLIPModel) against transformers: image and text features.

A random, perturbed ``CLIPModel`` (full-width towers at reduced depth, with a tiny BPE
vocabulary) is saved as vinid/plip publishes it: ``pytorch_model.bin`` with the legacy
``position_ids`` buffers, next to ``vocab.json`` and ``merges.txt``. It is loaded through
``histobag.build_feature_extractor`` and compared with ``get_image_features`` and
``get_text_features``. The real factory's key names and shapes are checked at full size on the
meta device.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from tokenizers.pre_tokenizers import ByteLevel
from transformers.core_model_loading import revert_weight_conversion

import histobag
from histobag.errors import HistobagError, WeightsError
from histobag.extractors.preprocess import build_transform
from histobag_noncommercial import plip
from histobag_noncommercial.clip_model import CLIPArch
from histobag_noncommercial.hf_specs import CLIP_MEAN, CLIP_STD
from tests.helpers import histology_tiles
from tests.parity import (
    assert_parity,
    build_fp32,
    mismatch_message,
    perturbed,
    registered_variant,
)

TEST_DEPTH = 2
MERGES = [("t", "u"), ("m", "o"), ("mo", "r</w>"), ("tu", "mor</w>"), ("s", "s"), ("i", "ss")]
TEXTS = [
    "an H&E image of tumor tissue",
    "lymphocytes",
    "Stroma, with many fibroblasts; " * 12,  # longer than the 77-token context: truncated
]


def tiny_vocab() -> dict[str, int]:
    """A tiny CLIP BPE vocabulary, ordered like CLIP's: the byte alphabet, the same with
    ``</w>``, the merges, then the start and end tokens (the end token has the highest id)."""
    alphabet = sorted(ByteLevel.alphabet())
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *(a + b for a, b in MERGES)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


VOCAB_SIZE = len(tiny_vocab())


def write_tokenizer_files(folder: Path) -> None:
    """vocab.json and merges.txt of :func:`tiny_vocab`, as the Hub repository holds them."""
    (folder / "vocab.json").write_text(json.dumps(tiny_vocab()), encoding="utf-8")
    merges = "\n".join(f"{a} {b}" for a, b in MERGES)
    (folder / "merges.txt").write_text(f"#version: 0.2\n{merges}\n", encoding="utf-8")


def clip_config(vocab_size: int, eos: int, depth: int | None = None) -> Any:
    """vinid/plip's config.json (openai/clip-vit-base-patch32), optionally at reduced depth."""
    text = dict(
        vocab_size=vocab_size,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=depth or 12,
        num_attention_heads=8,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=eos - 1,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    vision = dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=depth or 12,
        num_attention_heads=12,
        image_size=224,
        patch_size=32,
        hidden_act="quick_gelu",
    )
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)


#: vinid/plip's preprocessor_config.json, but for the normalisation (CLIP's, below).
PROCESSOR_JSON = (
    '{"do_resize": true, "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": true, '
    '"crop_size": {"height": 224, "width": 224}, "do_rescale": true, '
    '"rescale_factor": 0.00392156862745098, "do_normalize": true, "do_convert_rgb": true}'
)


def reference_processor() -> Any:
    """vinid/plip's image processor."""
    return transformers.CLIPImageProcessor(
        **json.loads(PROCESSOR_JSON), image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)
    )


def legacy_buffers(config: Any) -> dict[str, torch.Tensor]:
    """The ``position_ids`` buffers that checkpoints saved by transformers < 4.31 contain."""
    vision = config.vision_config
    positions = (vision.image_size // vision.patch_size) ** 2 + 1
    return {
        "text_model.embeddings.position_ids": torch.arange(77)[None],
        "vision_model.embeddings.position_ids": torch.arange(positions)[None],
    }


def small_plip(spec: histobag.ExtractorSpec, *, tokenizer: str | None = None) -> Any:
    """PLIP's factory at reduced depth with the tiny vocabulary (registered by :func:`reduced`)."""
    arch = CLIPArch(vision_layers=TEST_DEPTH, text_layers=TEST_DEPTH, vocab_size=VOCAB_SIZE)
    return plip.build_clip(arch, tokenizer=tokenizer)


def reduced() -> contextlib.AbstractContextManager[str]:
    """Register PLIP's spec under a new name whose factory builds the reduced model."""
    return registered_variant("plip", f"{__name__}:small_plip", suffix=f"-depth{TEST_DEPTH}")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """(folder as on the Hub, perturbed reference CLIPModel, its tokenizer)."""
    folder = tmp_path_factory.mktemp("plip")
    write_tokenizer_files(folder)
    tokenizer = transformers.CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt")
    )
    assert tokenizer.eos_token_id == VOCAB_SIZE - 1
    config = clip_config(VOCAB_SIZE, tokenizer.eos_token_id, depth=TEST_DEPTH)
    torch.manual_seed(0)
    reference = perturbed(transformers.CLIPModel(config), seed=2)
    reference.save_pretrained(folder)
    state = {**load_file(folder / "model.safetensors"), **legacy_buffers(config)}
    torch.save(state, folder / "pytorch_model.bin")
    return folder, reference, tokenizer


@pytest.fixture(scope="module")
def extractor(saved: tuple[Path, Any, Any]) -> Any:
    """The reduced PLIP built from the published file, in float32 on the CPU."""
    folder, _, _ = saved
    with reduced() as name:
        return build_fp32(name, folder / "pytorch_model.bin")


def test_image_features_match(saved: Any, extractor: Any, tiles224: np.ndarray) -> None:
    _, reference, _ = saved
    pixels = reference_processor()(list(tiles224), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        expected = reference.get_image_features(pixel_values=pixels).pooler_output
    features = extractor(tiles224)
    assert features.shape == (4, 512)
    assert_parity(features, expected)


def test_text_features_match(saved: Any, extractor: Any) -> None:
    _, reference, tokenizer = saved
    tokens = tokenizer(TEXTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    assert tokens["input_ids"].shape[1] == 77  # the long text was truncated
    with torch.inference_mode():
        expected = reference.get_text_features(**tokens).pooler_output
        reference.text_model.eos_token_id = 2  # legacy configs pool at the highest token id
        legacy = reference.get_text_features(**tokens).pooler_output
        reference.text_model.eos_token_id = tokenizer.eos_token_id
    features = extractor.text_features(TEXTS)
    assert features.shape == (3, 512)
    assert_parity(features, expected)
    assert_parity(features, legacy)
    assert extractor.tokenizer_source == str(saved[0].resolve())


def test_safetensors_file_loads_the_same(saved: Any, extractor: Any, tiles224: Any) -> None:
    folder, _, _ = saved
    with reduced() as name:
        other = build_fp32(name, folder / "model.safetensors")
    assert torch.equal(other(tiles224), extractor(tiles224))


def test_tokenizer_from_another_folder(saved: Any, extractor: Any, tmp_path: Path) -> None:
    folder, _, _ = saved
    weights_only = tmp_path / "weights"
    weights_only.mkdir()
    shutil.copy(folder / "model.safetensors", weights_only / "model.safetensors")
    with reduced() as name:
        lonely = build_fp32(name, weights_only / "model.safetensors")
        with pytest.raises(WeightsError, match="tokenizer=") as caught:
            lonely.text_features(["tumor"])
        assert str(weights_only) in str(caught.value)
        pointed = build_fp32(name, weights_only / "model.safetensors", tokenizer=str(folder))
        assert pointed.dump_config()["kwargs"]["tokenizer"] == str(folder)
        MERGES.append(("e", "s"))  # a different vocabulary: one token more than the model's
        try:
            write_tokenizer_files(weights_only)
        finally:
            MERGES.pop()
        with pytest.raises(WeightsError, match="not this model's tokenizer"):
            lonely.text_features(["tumor"])
    assert torch.equal(pointed.text_features(TEXTS), extractor.text_features(TEXTS))


def test_tokenizer_needs_transformers(saved: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(HistobagError, match="pip install transformers"):
        plip.load_tokenizer(str(saved[0]))


def test_text_features_rejects_a_string(extractor: Any) -> None:
    with pytest.raises(TypeError, match="list of strings"):
        extractor.text_features("tumor")


def test_preprocessing_matches_image_processor() -> None:
    """At 256 px: shortest side to 224 (bicubic), then the center crop, as CLIPImageProcessor
    (fed float pixels so that it does not round to uint8)."""
    tiles = torch.from_numpy(histology_tiles(3, 256, seed=1)).permute(0, 3, 1, 2)
    expected = reference_processor()(
        list(tiles.float() / 255), do_rescale=False, return_tensors="pt"
    )
    ours = build_transform(histobag.extractor_info("plip").preprocessing)(tiles)
    assert ours.shape == (3, 3, 224, 224)
    assert (ours - expected["pixel_values"]).abs().max().item() <= 1e-5


def test_wrong_key_is_named(saved: Any, tmp_path: Path) -> None:
    folder, _, _ = saved
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["vision_model.post_layernorm.gamma"] = state.pop("vision_model.post_layernorm.weight")
    with reduced() as name:
        message = mismatch_message(name, tmp_path / "pytorch_model.bin", state)
    assert "vision_model.post_layernorm.gamma" in message


def test_missing_projection_is_reported(saved: Any, tmp_path: Path) -> None:
    folder, _, _ = saved
    state = load_file(folder / "model.safetensors")
    del state["text_projection.weight"]
    with reduced() as name:
        assert "text_projection" in mismatch_message(name, tmp_path / "model.safetensors", state)


def test_full_size_checkpoint_layout() -> None:
    """The real factory accepts every tensor of a full-size vinid/plip checkpoint."""
    config = clip_config(49408, 49407)
    with torch.device("meta"):
        reference = transformers.CLIPModel(config)
        hub = revert_weight_conversion(reference, reference.state_dict())
        build = plip.build_plip(histobag.extractor_info("plip"))
    hub.update(legacy_buffers(config))
    assert "vision_model.encoder.layers.11.self_attn.q_proj.weight" in hub
    own = build.module.state_dict()
    adapted = build.adapt_state_dict(hub)
    assert {k: tuple(v.shape) for k, v in adapted.items()} == {
        k: tuple(v.shape) for k, v in own.items()
    }
    assert build.extractor_cls is plip.PLIPExtractor


def test_spec() -> None:
    spec = histobag.extractor_info("plip")
    assert spec.pack == "histobag-noncommercial"
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == (
        "vinid/plip",
        "pytorch_model.bin",
        False,
    )
    assert spec.license == "NOASSERTION"
    assert spec.num_features == 512
    assert "Huang" in spec.citation
    assert spec.model_kwargs == ("tokenizer",)
    pre = spec.preprocessing
    assert (pre.resize, pre.center_crop, pre.resize_first, pre.interpolation) == (
        224,
        224,
        True,
        "bicubic",
    )
