"""Hibou-B and Hibou-L against transformers' DINOv2 with registers, as HistAI publish them.

The hub repositories hold ``model.safetensors`` files of transformers' layout for HistAI's own
``Dinov2ModelWithRegisters`` (written for transformers 4.41, loaded with
``trust_remote_code``). transformers' ``Dinov2WithRegistersModel`` has the same modules and
tensor names and, at the 224 px the position embeddings were trained for, computes the same
function (neither interpolates), so it is the reference here: built from the published
``config.json``, every tensor perturbed, saved with ``save_pretrained``, loaded through
``histobag.build_feature_extractor`` and compared by ``pooler_output`` (what HistAI's example
reads). Numerical parity runs at full width and reduced depth; the real factories' key names
and shapes are checked at full size on the meta device.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers.core_model_loading import revert_weight_conversion

import histobag
from histobag.errors import ExtractorArgumentError
from histobag.extractors.preprocess import build_transform
from histobag_apache import hibou
from tests.helpers import histology_tiles
from tests.parity import (
    assert_imports_no_heavy_modules,
    assert_parity,
    build_fp32,
    mismatch_message,
    normalised,
    perturbed,
    registered_variant,
)

TEST_DEPTH = 2
HIBOU_NORM = ((0.7068, 0.5755, 0.7220), (0.1950, 0.2316, 0.1816))

#: The architecture fields of histai/hibou-b's config.json; Hibou-L is the ViT-L/14 of the
#: same recipe (hidden_size 1024, 16 heads, 24 layers).
HIBOU_B_JSON = (
    '{"hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 12, "mlp_ratio": 4, '
    '"hidden_act": "gelu", "image_size": 224, "patch_size": 14, "layer_norm_eps": 1e-06, '
    '"layerscale_value": 1.0, "qkv_bias": true, "num_register_tokens": 4, '
    '"use_swiglu_ffn": true}'
)
LARGE = {"hidden_size": 1024, "num_attention_heads": 16, "num_hidden_layers": 24}

#: name: (config overrides, published parameters in millions: hibou-b's 343 MB float32 file).
MODELS: dict[str, tuple[dict[str, int], float | None]] = {
    "hibou-b": ({}, 85.7),
    "hibou-l": (LARGE, None),
}


def config(name: str, depth: int | None = None) -> Any:
    """The published config of ``name``, at ``depth`` layers if given."""
    fields = {**json.loads(HIBOU_B_JSON), **MODELS[name][0]}
    if depth is not None:
        fields["num_hidden_layers"] = depth
    return transformers.Dinov2WithRegistersConfig(**fields)


def small_hibou_b(spec: histobag.ExtractorSpec) -> Any:
    """Hibou-B's factory at reduced depth (registered by :func:`reduced`)."""
    return hibou.build_hibou(hibou.HibouArch(embed_dim=768, depth=TEST_DEPTH, num_heads=12))


def small_hibou_l(spec: histobag.ExtractorSpec) -> Any:
    """Hibou-L's factory at reduced depth (registered by :func:`reduced`)."""
    return hibou.build_hibou(hibou.HibouArch(embed_dim=1024, depth=TEST_DEPTH, num_heads=16))


SMALL_FACTORIES = {"hibou-b": "small_hibou_b", "hibou-l": "small_hibou_l"}


def reduced(name: str) -> contextlib.AbstractContextManager[str]:
    """Register ``name``'s spec under a new name whose factory builds TEST_DEPTH blocks."""
    factory = f"{__name__}:{SMALL_FACTORIES[name]}"
    return registered_variant(name, factory, suffix=f"-depth{TEST_DEPTH}")


def card_transform() -> Any:
    """The official example's pipeline on PIL images: Resize((224, 224), bicubic),
    CenterCrop(224), ToTensor, Normalize with HistAI's mean and std."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    return T.Compose(
        [
            T.Resize((224, 224), interpolation=InterpolationMode.BICUBIC),
            T.CenterCrop((224, 224)),
            T.ToTensor(),
            T.Normalize(*HIBOU_NORM),
        ]
    )


@pytest.fixture(scope="module", params=sorted(MODELS))
def saved(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Any]:
    """(name, folder holding the model.safetensors of a perturbed reduced-depth reference,
    that reference)."""
    name = request.param
    torch.manual_seed(0)
    reference = perturbed(transformers.Dinov2WithRegistersModel(config(name, TEST_DEPTH)), seed=1)
    folder = tmp_path_factory.mktemp(name)
    reference.save_pretrained(folder)
    return name, folder, reference


def test_parity_with_transformers(saved: Any) -> None:
    """224 px tiles (nothing resampled): histobag's embedding is the reference's
    ``pooler_output``, the final-normalised class token."""
    name, folder, reference = saved
    tiles = histology_tiles(4, 224)
    with reduced(name) as test_name:
        features = build_fp32(test_name, folder / "model.safetensors")(tiles)
    with torch.inference_mode():
        expected = reference(pixel_values=normalised(tiles, HIBOU_NORM)).pooler_output
    assert features.shape == (4, histobag.extractor_info(name).num_features)
    assert_parity(features, expected)


@pytest.mark.parametrize("size", [224, 256, 512])
def test_preprocessing_matches_official_pipeline(size: int) -> None:
    """histobag's on-device transform against the official pipeline on PIL images, up to
    PIL's rounding to uint8; nothing is resampled at 224 px, so that size is exact."""
    from PIL import Image

    tiles = histology_tiles(2, size, seed=1)
    pipeline = card_transform()
    expected = torch.stack([pipeline(Image.fromarray(tile)) for tile in tiles])
    batch = torch.from_numpy(tiles).permute(0, 3, 1, 2)
    for name in MODELS:
        ours = build_transform(histobag.extractor_info(name).preprocessing)(batch)
        assert ours.shape == expected.shape == (2, 3, 224, 224)
        diff = (ours - expected).abs()
        if size == 224:
            assert float(diff.max()) <= 1e-6
        else:
            assert float(diff.mean()) < 0.007
            assert float(diff.max()) < 0.06


def test_other_tile_sizes_are_refused_unresized(saved: Any) -> None:
    """The position embeddings hold the 224 px grid and are added unchanged, so a 112 px tile
    without resizing fails with a message rather than a shape error."""
    name, folder, _ = saved
    with reduced(name) as test_name:
        extractor = build_fp32(
            test_name, folder / "model.safetensors", resize=False, center_crop=False
        )
        with pytest.raises(ExtractorArgumentError, match="only accepts 224x224"):
            extractor(histology_tiles(1, 112))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("rename", ["encoder.layer.0.mystery.weight"]),
        ("drop-key", ["encoder.layer.1.attention.attention.query.bias", "blocks.1.attn.qkv.bias"]),
        ("drop-pos", ["embeddings.cls_token"]),
    ],
    ids=["wrong-key", "incomplete-qkv", "no-position-embeddings"],
)
def test_checkpoint_errors_name_the_keys(
    saved: Any, tmp_path: Path, edit: str, named: list[str]
) -> None:
    """A renamed key is named as in the file; a missing part of a fused qkv names both the
    file's key and histobag's; a class token without its position embeddings is refused."""
    name, folder, _ = saved
    state = load_file(folder / "model.safetensors")
    if edit == "rename":
        state["encoder.layer.0.mystery.weight"] = state.pop("encoder.layer.0.norm2.weight")
    elif edit == "drop-key":
        del state["encoder.layer.1.attention.attention.key.bias"]
    else:
        del state["embeddings.position_embeddings"]
    with reduced(name) as test_name:
        message = mismatch_message(test_name, tmp_path / "model.safetensors", state)
    assert all(key in message for key in named)


def test_conversion_folds_the_class_position() -> None:
    """The class token's position embedding is added to it; the patches' become pos_embed;
    the registers get none."""
    dim = 8
    state = {
        "embeddings.cls_token": torch.randn(1, 1, dim),
        "embeddings.position_embeddings": torch.randn(1, 5, dim),
        "embeddings.register_tokens": torch.randn(1, 4, dim),
        "embeddings.mask_token": torch.randn(1, dim),
    }
    out = hibou.convert(state)
    position = state["embeddings.position_embeddings"]
    assert sorted(out) == ["cls_token", "pos_embed", "reg_token"]
    assert torch.equal(out["cls_token"], state["embeddings.cls_token"] + position[:, :1])
    assert torch.equal(out["pos_embed"], position[:, 1:])
    assert torch.equal(out["reg_token"], state["embeddings.register_tokens"])


def hub_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The names and shapes ``save_pretrained`` writes for a full-size ``name`` (meta
    tensors)."""
    with torch.device("meta"):
        model = transformers.Dinov2WithRegistersModel(config(name))
    return revert_weight_conversion(model, model.state_dict())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_full_size_checkpoint_layout(name: str) -> None:
    """The real factories accept every tensor of a full-size checkpoint, by name and shape,
    and the network has the published size."""
    hub = hub_state_dict(name)
    assert "encoder.layer.0.mlp.weights_in.weight" in hub
    with torch.device("meta"):
        build = histobag.extractor_info(name).load_factory()(histobag.extractor_info(name))
        adapted = build.adapt_state_dict(hub)
    own = {k: tuple(v.shape) for k, v in build.module.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in adapted.items()} == own
    assert build.num_features == histobag.extractor_info(name).num_features
    assert build.fixed_input_size == 224
    published = MODELS[name][1]
    if published is not None:
        n_params = sum(p.numel() for p in build.module.parameters())
        assert n_params == pytest.approx(published * 1e6, rel=0.005)


def test_listed_with_their_licence() -> None:
    assert {"hibou-b", "hibou-l"} <= set(histobag.list_extractors(pack="histobag-apache"))
    assert {"hibou-b", "hibou-l"} <= set(histobag.list_extractors(license="apache-2.0"))
    for name, repo, gated, features in [
        ("hibou-b", "histai/hibou-b", False, 768),
        ("hibou-l", "histai/hibou-L", True, 1024),
    ]:
        spec = histobag.extractor_info(name)
        assert spec.license == "Apache-2.0"
        assert spec.license_url.startswith("https://www.apache.org/")
        assert (spec.hf_repo, spec.hf_filename, spec.gated) == (repo, "model.safetensors", gated)
        assert (spec.num_features, spec.input_size) == (features, 224)
        assert "Nechaev" in spec.citation
        assert spec.citation.count("{") == spec.citation.count("}")
        assert ("request access" in spec.description) == gated
        pre = spec.preprocessing
        assert (pre.resize, pre.center_crop, pre.interpolation) == (224, 224, "bicubic")
        assert (pre.mean, pre.std) == HIBOU_NORM


def test_specs_import_no_heavy_modules() -> None:
    assert_imports_no_heavy_modules("histobag_apache.hibou_specs", "torch", "timm", "transformers")


def test_swiglu_width_rule() -> None:
    """DINOv2's SwiGLU width: what transformers writes for both published sizes."""
    for name in MODELS:
        hub = hub_state_dict(name)
        width = hub["encoder.layer.0.mlp.weights_out.weight"].shape[1]
        assert width == hibou.swiglu_hidden(config(name).hidden_size)
    assert np.array_equal([hibou.swiglu_hidden(d) for d in (768, 1024)], [2048, 2736])
