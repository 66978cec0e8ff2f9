"""Virchow and H-optimus-0 against timm built and pooled as their model cards say.

Full size: key names and shapes on the meta device. Reduced depth: embeddings of real tiles
through histobag (its factory, strict loading of a flat ``pytorch_model.bin``, its on-device
preprocessing) against the reference model and a reference pipeline written here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.layers import SwiGLUPacked
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

import histobag
from histobag.errors import ExtractorArgumentError
from histobag.extractors.preprocess import build_transform
from histobag_apache import hoptimus, virchow
from tests.helpers import assert_full_size_timm_layout, histology_tiles, perturb_

DEPTH = 2
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


def _cls_and_patch_mean(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)  # Virchow's model card: (B, 257, 1280)
    return torch.cat([out[:, 0], out[:, 1:].mean(1)], dim=-1)


def _output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


@dataclass(frozen=True)
class Case:
    module: ModuleType  # histobag's model module (its build_network is shrunk for parity)
    arch: str
    kwargs: dict[str, Any]  # the official create_model arguments, written out independently
    embed: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    tile_px: int
    resize: int | None  # the model card's pipeline
    crop: int | None
    interpolation: str
    norm: tuple[tuple[float, ...], tuple[float, ...]]
    million_params: float  # published size


CASES = {
    "virchow": Case(
        module=virchow,
        arch="vit_huge_patch14_224",
        kwargs=dict(
            img_size=224,
            init_values=1e-5,
            num_classes=0,
            mlp_ratio=5.3375,
            global_pool="",
            mlp_layer=SwiGLUPacked,
            act_layer=torch.nn.SiLU,
        ),
        embed=_cls_and_patch_mean,
        tile_px=256,  # exercises the resize
        resize=224,
        crop=224,
        interpolation="bicubic",
        norm=IMAGENET,
        million_params=631,
    ),
    "h-optimus-0": Case(
        module=hoptimus,
        arch="vit_giant_patch14_reg4_dinov2",
        kwargs=dict(
            img_size=224,
            init_values=1e-5,
            dynamic_img_size=False,
            num_classes=0,
            global_pool="token",
        ),
        embed=_output,
        tile_px=224,
        resize=None,
        crop=None,
        interpolation="bicubic",
        norm=HOPTIMUS,
        million_params=1135,
    ),
}


def _reference_batch(tiles: np.ndarray, case: Case) -> torch.Tensor:
    """The model card's pipeline on float tensors (PIL's uint8 rounding is checked apart)."""
    steps: list[torch.nn.Module] = []
    if case.resize:
        mode = InterpolationMode(case.interpolation)
        steps.append(T.Resize(case.resize, interpolation=mode, antialias=True))
    if case.crop:
        steps.append(T.CenterCrop(case.crop))
    steps.append(T.Normalize(*case.norm))
    return T.Compose(steps)(torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255)


@pytest.mark.parametrize("name", list(CASES))
def test_full_size_layout_matches_official(name: str) -> None:
    case = CASES[name]
    assert_full_size_timm_layout(name, case.arch, case.kwargs, case.million_params)


@pytest.mark.parametrize("name", list(CASES))
def test_embeddings_match_model_card(name: str, tmp_path, monkeypatch) -> None:
    case = CASES[name]
    reference = timm.create_model(case.arch, pretrained=False, **{**case.kwargs, "depth": DEPTH})
    perturb_(reference.eval())
    gammas = [p.detach() for k, p in reference.named_parameters() if k.endswith(".gamma")]
    assert len(gammas) == 2 * DEPTH  # LayerScale after attention and after the MLP
    assert min(float(g.abs().mean()) for g in gammas) > 1e-3  # far from their init, 1e-5
    checkpoint = tmp_path / "pytorch_model.bin"
    torch.save(reference.state_dict(), checkpoint)
    shrunk = functools.partial(case.module.build_network, depth=DEPTH)
    monkeypatch.setattr(case.module, "build_network", shrunk)

    extractor = histobag.build_feature_extractor(
        name, weights=checkpoint, mixed_precision=False, device="cpu"
    )
    tiles = histology_tiles(2, case.tile_px)
    ours = extractor(tiles)
    with torch.inference_mode():
        expected = case.embed(reference, _reference_batch(tiles, case))

    assert ours.shape == (2, extractor.num_features) == expected.shape
    assert ours.dtype == torch.float32
    assert float((ours - expected).abs().max()) <= 1e-5
    assert float(expected.std()) > 0.1  # a real signal, not a collapsed output


@pytest.mark.parametrize("name", list(CASES))
def test_preprocessing_matches_pil_pipeline(name: str) -> None:
    """histobag's on-device transform vs the model card's torchvision pipeline on PIL images,
    up to PIL's rounding to uint8 (about half a grey level)."""
    case = CASES[name]
    spec = histobag.extractor_info(name)
    tiles = histology_tiles(2, case.tile_px)
    pil_steps: list[Any] = []
    if case.resize:
        mode = InterpolationMode(case.interpolation)
        pil_steps.append(T.Resize(case.resize, interpolation=mode))
    if case.crop:
        pil_steps.append(T.CenterCrop(case.crop))
    pil = T.Compose([*pil_steps, T.ToTensor(), T.Normalize(*case.norm)])
    expected = torch.stack([pil(Image.fromarray(tile)) for tile in tiles])

    batch = torch.from_numpy(tiles).permute(0, 3, 1, 2)
    ours = build_transform(spec.preprocessing)(batch)

    assert ours.shape == expected.shape == (2, 3, 224, 224)
    diff = (ours - expected).abs()
    if case.resize is None:
        assert float(diff.max()) <= 1e-6
    else:
        assert float(diff.mean()) < 0.007
        assert float(diff.max()) < 0.06
        # Without antialiasing the resampling kernel differs from PIL's, and it shows.
        plain = build_transform(spec.preprocessing.replace(antialias=False))(batch)
        assert float((plain - expected).abs().mean()) > 0.009


@pytest.mark.parametrize("name", list(CASES))
def test_fixed_size_networks_refuse_other_sizes(name: str, monkeypatch) -> None:
    """No dynamic_img_size: 256 px tiles that are not resized cannot reach the network."""
    module = CASES[name].module
    monkeypatch.setattr(module, "build_network", functools.partial(module.build_network, depth=1))
    extractor = histobag.build_feature_extractor(
        name, weights="random", device="cpu", resize=False, center_crop=False
    )
    with pytest.raises(ExtractorArgumentError, match="only accepts 224x224"):
        extractor(histology_tiles(1, 256))
