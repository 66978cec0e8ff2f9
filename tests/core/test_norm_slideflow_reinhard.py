"""histobag's Reinhard normalizers against slideflow 3.0.2's recorded outputs, name for name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from histobag.norm import autoselect
from histobag.norm.ops import standardize_brightness
from histobag.norm.presets import PRESETS
from histobag.norm.reinhard import (
    Reinhard,
    ReinhardFast,
    ReinhardFastMask,
    ReinhardMask,
    sf_rgb_to_lab,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slideflow-norm"
CLASSES = {
    "reinhard": Reinhard,
    "reinhard_fast": ReinhardFast,
    "reinhard_mask": ReinhardMask,
    "reinhard_fast_mask": ReinhardFastMask,
}
FITS = ("v1", "v2", "v3", "target")


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "norm_reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def ref_fits() -> dict[str, Any]:
    return json.loads((FIXTURES / "norm_reference.json").read_text())["fits"]


def _build(method: str, fit: str, ref: dict[str, np.ndarray]) -> Any:
    return CLASSES[method](ref["fit_target"] if fit == "target" else fit)


def _check_close(out: np.ndarray, expected: np.ndarray) -> None:
    diff = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 2, f"max abs diff {diff.max()}"
    assert (diff > 1).mean() < 0.01, f"{(diff > 1).mean():.2%} of values off by more than 1"


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("method", sorted(CLASSES))
def test_matches_slideflow(method: str, fit: str, ref: dict[str, np.ndarray]) -> None:
    norm = _build(method, fit, ref)
    expected = ref[f"{method}__{fit}"]
    images = ref["images"]
    single = np.stack([norm.transform(im) for im in images])
    _check_close(single, expected)
    # One batch of four, as a (B, 3, H, W) tensor.
    batch = norm.transform(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    batch_np = batch.permute(0, 2, 3, 1).numpy()
    _check_close(batch_np, expected)
    # A batch gives exactly what each image gives on its own.
    np.testing.assert_array_equal(batch_np, single)
    np.testing.assert_array_equal(norm.transform(images), single)


@pytest.mark.parametrize("method", sorted(CLASSES))
def test_fit_reproduces_slideflow_numbers(
    method: str, ref: dict[str, np.ndarray], ref_fits: dict[str, Any]
) -> None:
    fit = CLASSES[method](ref["fit_target"]).get_fit()
    expected = ref_fits[f"{method}__target"]
    np.testing.assert_allclose(
        fit["means"], np.ravel(expected["target_means"]), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(fit["stds"], np.ravel(expected["target_stds"]), rtol=1e-4)


@pytest.mark.parametrize("preset", ["v1", "v2", "v3"])
@pytest.mark.parametrize("method", sorted(CLASSES))
def test_presets_are_slideflows(method: str, preset: str, ref_fits: dict[str, Any]) -> None:
    fit = CLASSES[method](preset).get_fit()
    expected = ref_fits[f"{method}__{preset}"]
    np.testing.assert_allclose(fit["means"], expected["target_means"], rtol=1e-6)
    np.testing.assert_allclose(fit["stds"], expected["target_stds"], rtol=1e-6)


@pytest.mark.parametrize("method", sorted(CLASSES))
def test_default_is_v3(method: str, ref: dict[str, np.ndarray]) -> None:
    default = CLASSES[method]()
    assert default.get_fit() == PRESETS[method]["v3"]
    np.testing.assert_array_equal(
        default.transform(ref["images"]), CLASSES[method]("v3").transform(ref["images"])
    )
    auto = autoselect(method)
    assert type(auto) is CLASSES[method]
    np.testing.assert_array_equal(auto.transform(ref["images"]), default.transform(ref["images"]))


def test_fit_shapes_and_roundtrip(ref: dict[str, np.ndarray]) -> None:
    norm = Reinhard(ref["fit_target"])
    assert Reinhard.fit_shapes == {"means": (3,), "stds": (3,)}
    again = Reinhard(norm.get_fit())
    np.testing.assert_array_equal(norm.transform(ref["images"]), again.transform(ref["images"]))


@pytest.mark.parametrize("cls", [ReinhardMask, ReinhardFastMask])
def test_mask_keeps_bright_pixels(cls: type[Any], ref: dict[str, np.ndarray]) -> None:
    images = ref["images"].copy()
    images[:, :20] = 250  # a near-white band (L* > 93) on every image
    out = cls().transform(images)
    band = images[:, :20]
    if cls is ReinhardMask:  # slideflow keeps the brightness-standardised value
        x = torch.from_numpy(images).permute(0, 3, 1, 2).reshape(4, 3, -1)
        std = standardize_brightness(x).reshape(4, 3, 112, 112).permute(0, 2, 3, 1)
        band = std.numpy()[:, :20]
    np.testing.assert_array_equal(out[:, :20], band)
    assert (out[:, 40:] != images[:, 40:]).any()


def test_mask_threshold_is_slideflows(ref: dict[str, np.ndarray]) -> None:
    x = torch.from_numpy(ref["images"]).permute(0, 3, 1, 2).reshape(4, 3, -1)
    lab = sf_rgb_to_lab(x)
    tissue = (lab[:, 0] / 100) < 0.93
    out = ReinhardFastMask().transform(ref["images"]).transpose(0, 3, 1, 2).reshape(4, 3, -1)
    kept = ~tissue[:, None].expand_as(x).numpy()
    np.testing.assert_array_equal(out[kept], x.numpy()[kept])


@pytest.mark.parametrize("method", sorted(CLASSES))
def test_blank_and_flat_images_unchanged(method: str) -> None:
    norm = CLASSES[method]()
    white = np.full((2, 16, 16, 3), 255, dtype=np.uint8)
    np.testing.assert_array_equal(norm.transform(white), white)
    grey = np.full((1, 16, 16, 3), 120, dtype=np.uint8)  # tissue-dark but flat: std 0
    np.testing.assert_array_equal(norm.transform(grey), grey)
    # With min_tissue=0 a mostly white tile is normalised, as slideflow does.
    tile = np.full((16, 16, 3), 255, dtype=np.uint8)
    tile[0, 0] = (150, 80, 160)
    assert (CLASSES[method](min_tissue=0).transform(tile) != tile).any()
    np.testing.assert_array_equal(norm.transform(tile), tile)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", sorted(CLASSES))
def test_cuda_matches_cpu(method: str, ref: dict[str, np.ndarray]) -> None:
    norm = CLASSES[method]()
    x = torch.from_numpy(ref["images"]).permute(0, 3, 1, 2).contiguous()
    gpu = norm.transform(x.cuda())
    assert gpu.device.type == "cuda"
    _check_close(gpu.cpu().permute(0, 2, 3, 1).numpy(), ref[f"{method}__v3"])
    single = torch.cat([norm.transform(im[None].cuda()) for im in x])
    assert torch.equal(gpu, single)
