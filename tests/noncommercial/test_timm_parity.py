"""UNI, UNI2-h, Virchow2 and the GigaPath tile encoder against timm, as their model cards say.

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
from histobag.extractors.preprocess import build_transform
from histobag_noncommercial import gigapath_tile, uni, uni2, virchow2
from tests.helpers import assert_full_size_timm_layout, histology_tiles, perturb_

DEPTH = 2
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _output(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _virchow2_embedding(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)  # Virchow2's model card: (B, 261, 1280); tokens 1-4 are registers
    return torch.cat([out[:, 0], out[:, 5:].mean(1)], dim=-1)


@dataclass(frozen=True)
class Case:
    module: ModuleType  # histobag's model module (its build_network is shrunk for parity)
    arch: str
    kwargs: dict[str, Any]  # the official create_model arguments, written out independently
    embed: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    tile_px: int
    resize: int  # the model card's pipeline
    crop: int | None
    interpolation: str
    million_params: float  # published size


CASES = {
    "uni": Case(
        module=uni,
        arch="vit_large_patch16_224",
        kwargs=dict(
            img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True
        ),
        embed=_output,
        tile_px=256,  # exercises the resize
        resize=224,
        crop=None,  # the card resizes only
        interpolation="bilinear",
        million_params=303,
    ),
    "uni2-h": Case(
        module=uni2,
        arch="vit_giant_patch14_224",
        kwargs=dict(
            img_size=224,
            patch_size=14,
            depth=24,
            num_heads=24,
            init_values=1e-5,
            embed_dim=1536,
            mlp_ratio=2.66667 * 2,
            num_classes=0,
            no_embed_class=True,
            mlp_layer=SwiGLUPacked,
            act_layer=torch.nn.SiLU,
            reg_tokens=8,
            dynamic_img_size=True,
        ),
        embed=_output,
        tile_px=224,
        resize=224,
        crop=None,
        interpolation="bilinear",
        million_params=681,
    ),
    "virchow2": Case(
        module=virchow2,
        arch="vit_huge_patch14_224",
        kwargs=dict(
            img_size=224,
            init_values=1e-5,
            num_classes=0,
            reg_tokens=4,
            mlp_ratio=5.3375,
            global_pool="",
            dynamic_img_size=True,
            mlp_layer=SwiGLUPacked,
            act_layer=torch.nn.SiLU,
        ),
        embed=_virchow2_embedding,
        tile_px=224,
        resize=224,
        crop=224,
        interpolation="bicubic",
        million_params=631,
    ),
    "gigapath.tile": Case(
        module=gigapath_tile,
        arch="vit_giant_patch14_dinov2",
        kwargs=dict(
            img_size=224,
            in_chans=3,
            patch_size=16,
            embed_dim=1536,
            depth=40,
            num_heads=24,
            init_values=1e-5,
            mlp_ratio=5.33334,
            num_classes=0,
        ),
        embed=_output,
        tile_px=224,  # upsampled to 256, then cropped
        resize=256,
        crop=224,
        interpolation="bicubic",
        million_params=1135,
    ),
}


def _to_float(tiles: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255


def _reference_batch(tiles: np.ndarray, case: Case) -> torch.Tensor:
    """The model card's pipeline on float tensors (PIL's uint8 rounding is checked apart)."""
    mode = InterpolationMode(case.interpolation)
    steps: list[torch.nn.Module] = [T.Resize(case.resize, interpolation=mode, antialias=True)]
    if case.crop:
        steps.append(T.CenterCrop(case.crop))
    steps.append(T.Normalize(*IMAGENET))
    return T.Compose(steps)(_to_float(tiles))


def _perturbed_checkpoint(case: Case, directory, depth: int = DEPTH) -> tuple[torch.nn.Module, Any]:
    reference = timm.create_model(case.arch, pretrained=False, **{**case.kwargs, "depth": depth})
    perturb_(reference.eval())
    gammas = [p.detach() for k, p in reference.named_parameters() if k.endswith(".gamma")]
    assert len(gammas) == 2 * depth  # LayerScale after attention and after the MLP
    assert min(float(g.abs().mean()) for g in gammas) > 1e-3  # far from their init, 1e-5
    checkpoint = directory / "pytorch_model.bin"
    torch.save(reference.state_dict(), checkpoint)
    return reference, checkpoint


def _shrink(monkeypatch, module: ModuleType, depth: int = DEPTH) -> None:
    monkeypatch.setattr(
        module, "build_network", functools.partial(module.build_network, depth=depth)
    )


@pytest.mark.parametrize("name", list(CASES))
def test_full_size_layout_matches_official(name: str) -> None:
    case = CASES[name]
    assert_full_size_timm_layout(name, case.arch, case.kwargs, case.million_params)


@pytest.mark.parametrize("name", list(CASES))
def test_embeddings_match_model_card(name: str, tmp_path, monkeypatch) -> None:
    case = CASES[name]
    reference, checkpoint = _perturbed_checkpoint(case, tmp_path)
    _shrink(monkeypatch, case.module)

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


def test_uni_runs_at_the_tile_size_without_resizing(tmp_path, monkeypatch) -> None:
    """dynamic_img_size: 256 px tiles run as they are, position embeddings interpolated."""
    case = CASES["uni"]
    reference, checkpoint = _perturbed_checkpoint(case, tmp_path, depth=1)
    _shrink(monkeypatch, case.module, depth=1)
    extractor = histobag.build_feature_extractor(
        "uni",
        weights=checkpoint,
        mixed_precision=False,
        device="cpu",
        resize=False,
        center_crop=False,
    )
    tiles = histology_tiles(2, 256)
    ours = extractor(tiles)
    with torch.inference_mode():
        expected = reference(T.Normalize(*IMAGENET)(_to_float(tiles)))
    assert ours.shape == (2, 1024)
    assert float((ours - expected).abs().max()) <= 1e-5


@pytest.mark.parametrize("name", list(CASES))
def test_preprocessing_matches_pil_pipeline(name: str) -> None:
    """histobag's on-device transform vs the model card's torchvision pipeline on PIL images,
    up to PIL's rounding to uint8 (about half a grey level)."""
    case = CASES[name]
    spec = histobag.extractor_info(name)
    tiles = histology_tiles(2, 256 if name != "gigapath.tile" else 224)
    mode = InterpolationMode(case.interpolation)
    pil_steps: list[Any] = [T.Resize(case.resize, interpolation=mode)]
    if case.crop:
        pil_steps.append(T.CenterCrop(case.crop))
    pil = T.Compose([*pil_steps, T.ToTensor(), T.Normalize(*IMAGENET)])
    expected = torch.stack([pil(Image.fromarray(tile)) for tile in tiles])

    batch = torch.from_numpy(tiles).permute(0, 3, 1, 2)
    ours = build_transform(spec.preprocessing)(batch)

    assert ours.shape == expected.shape == (2, 3, 224, 224)
    diff = (ours - expected).abs()
    assert float(diff.mean()) < 0.007
    assert float(diff.max()) < 0.06
    # Without antialiasing the resampling kernel differs from PIL's, and it shows.
    plain = build_transform(spec.preprocessing.replace(antialias=False))(batch)
    assert float((plain - expected).abs().mean()) > 0.009


def test_gigapath_refuses_other_input_sizes(monkeypatch) -> None:
    """No dynamic_img_size: 256 px tiles that are not cropped cannot reach the network."""
    _shrink(monkeypatch, gigapath_tile, depth=1)
    extractor = histobag.build_feature_extractor(
        "gigapath.tile", weights="random", device="cpu", resize=False, center_crop=False
    )
    with pytest.raises(histobag.HistobagError, match="only accepts 224x224"):
        extractor(histology_tiles(1, 256))
