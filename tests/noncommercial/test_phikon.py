"""Phikon (transformers ViTModel) and Phikon-v2 (transformers Dinov2Model) against transformers.

Random, perturbed transformers models are saved in the published layout (``save_pretrained``'s
``model.safetensors``, and a ``pytorch_model.bin`` holding the same hub-named tensors), loaded
through ``histobag.build_feature_extractor`` and compared on real histology tiles, each side
with its own preprocessing. Numerical parity runs at full width and reduced depth; the real
factories' key names and shapes are checked at full size on the meta device.
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
from histobag.extractors.preprocess import build_transform
from histobag_noncommercial import hf_layout, phikon
from tests.helpers import histology_tiles
from tests.parity import (
    assert_imports_no_heavy_modules,
    assert_parity,
    build_fp32,
    mismatch_message,
    perturbed,
    registered_variant,
)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TEST_DEPTH = 2


#: The architecture fields of the published config.json files.
PHIKON_JSON = (
    '{"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, '
    '"hidden_act": "gelu", "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-06, '
    '"qkv_bias": true}'
)
PHIKON_V2_JSON = (
    '{"hidden_size": 1024, "num_attention_heads": 16, "mlp_ratio": 4, "hidden_act": "gelu", '
    '"image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-06, "layerscale_value": 1e-05, '
    '"qkv_bias": true, "use_swiglu_ffn": false}'
)


def phikon_config(depth: int = 12) -> Any:
    """owkin/phikon's config.json (ViT-B/16, layer_norm_eps 1e-6)."""
    return transformers.ViTConfig(**json.loads(PHIKON_JSON), num_hidden_layers=depth)


def phikon_v2_config(depth: int = 24) -> Any:
    """owkin/phikon-v2's config.json (DINOv2 ViT-L/16 at 224 px)."""
    return transformers.Dinov2Config(**json.loads(PHIKON_V2_JSON), num_hidden_layers=depth)


def reference_processor(name: str) -> Any:
    """The image processors of the published preprocessor_config.json files."""
    common = dict(
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    if name == "phikon":
        return transformers.ViTImageProcessor(
            do_resize=True, size={"height": 224, "width": 224}, resample=2, **common
        )
    return transformers.BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": 224},
        resample=3,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_convert_rgb=True,
        **common,
    )


def small_phikon(spec: histobag.ExtractorSpec) -> Any:
    """Phikon's factory at reduced depth (registered by :func:`reduced`)."""
    arch = phikon.ViTArch(embed_dim=768, depth=TEST_DEPTH, num_heads=12)
    return phikon.build_hf_vit(arch, hf_layout.VIT)


def small_phikon_v2(spec: histobag.ExtractorSpec) -> Any:
    """Phikon-v2's factory at reduced depth (registered by :func:`reduced`)."""
    arch = phikon.ViTArch(embed_dim=1024, depth=TEST_DEPTH, num_heads=16, layer_scale=1e-5)
    return phikon.build_hf_vit(arch, hf_layout.DINOV2)


MODELS = {
    "phikon": (phikon_config, lambda c: transformers.ViTModel(c, add_pooling_layer=False)),
    "phikon-v2": (phikon_v2_config, transformers.Dinov2Model),
}
SMALL_FACTORIES = {"phikon": "small_phikon", "phikon-v2": "small_phikon_v2"}


def reduced(name: str) -> contextlib.AbstractContextManager[str]:
    """Register ``name``'s spec under a new name whose factory builds TEST_DEPTH blocks."""
    factory = f"{__name__}:{SMALL_FACTORIES[name]}"
    return registered_variant(name, factory, suffix=f"-depth{TEST_DEPTH}")


def reference_features(name: str, reference: Any, tiles: np.ndarray) -> torch.Tensor:
    """CLS of last_hidden_state, after the reference image processor."""
    pixels = reference_processor(name)(list(tiles), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        return reference(pixel_values=pixels).last_hidden_state[:, 0]


@pytest.fixture(scope="module", params=sorted(MODELS))
def saved(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiles224: np.ndarray
) -> tuple[str, Path, torch.Tensor]:
    """(name, folder with model.safetensors and pytorch_model.bin, reference features of
    ``tiles224``) for a perturbed reduced-depth reference model."""
    name = request.param
    make_config, make_model = MODELS[name]
    torch.manual_seed(0)
    reference = perturbed(make_model(make_config(TEST_DEPTH)), seed=1)
    folder = tmp_path_factory.mktemp(name)
    reference.save_pretrained(folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    return name, folder, reference_features(name, reference, tiles224)


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_parity_with_transformers(saved: Any, filename: str, tiles224: np.ndarray) -> None:
    name, folder, expected = saved
    with reduced(name) as test_name:
        features = build_fp32(test_name, folder / filename)(tiles224)
    assert features.shape == (4, histobag.extractor_info(name).num_features)
    assert_parity(features, expected)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_preprocessing_matches_image_processor(name: str) -> None:
    """At 256 px the resize (and crop) run: same geometry, interpolation and normalisation as
    the published image processor (fed float pixels, so that it does not round to uint8)."""
    tiles = torch.from_numpy(histology_tiles(3, 256, seed=1)).permute(0, 3, 1, 2)
    processor = reference_processor(name)
    expected = processor(list(tiles.float() / 255), do_rescale=False, return_tensors="pt")
    ours = build_transform(histobag.extractor_info(name).preprocessing)(tiles)
    assert ours.shape == (3, 3, 224, 224)
    assert (ours - expected["pixel_values"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("rename", ["encoder.layer.0.mystery.weight"]),
        ("drop", ["encoder.layer.1.attention.attention.query.bias", "blocks.1.attn.qkv.bias"]),
    ],
    ids=["wrong-key", "incomplete-qkv"],
)
def test_checkpoint_errors_name_the_keys(
    saved: Any, tmp_path: Path, edit: str, named: list
) -> None:
    """A renamed key is named as in the file; a missing part of a fused qkv names both the
    file's key and histobag's."""
    name, folder, _ = saved
    state = load_file(folder / "model.safetensors")
    if edit == "rename":
        norm = "layernorm_after" if name == "phikon" else "norm2"
        state["encoder.layer.0.mystery.weight"] = state.pop(f"encoder.layer.0.{norm}.weight")
    else:
        del state["encoder.layer.1.attention.attention.key.bias"]
    with reduced(name) as test_name:
        message = mismatch_message(test_name, tmp_path / "model.safetensors", state)
    assert all(key in message for key in named)


def hub_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The names and shapes ``save_pretrained`` writes for ``model`` (meta tensors)."""
    return revert_weight_conversion(model, model.state_dict())


@pytest.mark.parametrize(
    ("name", "factory", "make_reference"),
    [
        ("phikon", phikon.build_phikon, lambda: transformers.ViTModel(phikon_config(), False)),
        ("phikon", phikon.build_phikon, lambda: transformers.ViTModel(phikon_config())),
        ("phikon-v2", phikon.build_phikon_v2, lambda: transformers.Dinov2Model(phikon_v2_config())),
    ],
    ids=["phikon", "phikon-with-pooler", "phikon-v2"],
)
def test_full_size_checkpoint_layout(name: str, factory: Any, make_reference: Any) -> None:
    """The real factories accept every tensor of a full-size checkpoint, by name and shape."""
    with torch.device("meta"):
        hub = hub_state_dict(make_reference())
        build = factory(histobag.extractor_info(name))
    assert "encoder.layer.0.attention.attention.query.weight" in hub
    own = build.module.state_dict()
    adapted = build.adapt_state_dict(hub)
    assert sorted(adapted) == sorted(own)
    assert {k: tuple(v.shape) for k, v in adapted.items()} == {
        k: tuple(v.shape) for k, v in own.items()
    }
    assert build.num_features == histobag.extractor_info(name).num_features


def test_task_model_prefix_is_accepted() -> None:
    """A checkpoint saved from ViTForImageClassification nests the backbone under ``vit.``."""
    state = {"vit.embeddings.cls_token": torch.zeros(1, 1, 4), "vit.layernorm.bias": torch.ones(4)}
    assert sorted(hf_layout.convert(state, hf_layout.VIT)) == ["cls_token", "norm.bias"]


def test_listed_with_their_licence() -> None:
    names = histobag.list_extractors(pack="histobag-noncommercial")
    assert {"phikon", "phikon-v2", "plip"} <= set(names)
    for name, repo in [("phikon", "owkin/phikon"), ("phikon-v2", "owkin/phikon-v2")]:
        spec = histobag.extractor_info(name)
        assert spec.license == "LicenseRef-owkin-non-commercial"
        assert (spec.hf_repo, spec.hf_filename, spec.gated) == (repo, "model.safetensors", False)
        assert "Filiot" in spec.citation
    assert histobag.extractor_info("phikon-v2").preprocessing.resize_first


def test_specs_import_no_heavy_modules() -> None:
    assert_imports_no_heavy_modules(
        "histobag_noncommercial.hf_specs", "torch", "timm", "transformers"
    )
