"""histobag's ``macenko`` and ``macenko_fast`` against slideflow 3.0.2's (torch backend).

The reference outputs and fits are in ``tests/fixtures/slideflow-norm/`` (see its README).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from histobag.norm import autoselect
from histobag.norm.macenko import Macenko, MacenkoFast
from histobag.norm.ops import standardize_brightness, torch_quantile
from histobag.norm.presets import PRESETS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slideflow-norm"
CLASSES = {"macenko": Macenko, "macenko_fast": MacenkoFast}
FITS = ["v1", "v2", "v3", "target"]


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "norm_reference.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def reference_fits() -> dict[str, dict[str, list]]:
    return json.loads((FIXTURES / "norm_reference.json").read_text())["fits"]


def _normalizer(method: str, fit: str, reference: dict[str, np.ndarray]) -> Macenko:
    cls = CLASSES[method]
    return cls(reference["fit_target"] if fit == "target" else fit)


def _assert_close_to_slideflow(ours: np.ndarray, theirs: np.ndarray) -> None:
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    assert diff.max() <= 2, f"max abs diff {diff.max()}"
    assert (diff > 1).mean() < 0.01, f"{(diff > 1).mean():.3%} of values off by more than 1"


# --------------------------------------------------------------------- against slideflow
@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("method", sorted(CLASSES))
def test_matches_slideflow_image_by_image_and_batched(
    method: str, fit: str, reference: dict[str, np.ndarray]
) -> None:
    norm = _normalizer(method, fit, reference)
    images, expected = reference["images"], reference[f"{method}__{fit}"]
    singles = np.stack([norm.transform(im) for im in images])
    batch = norm.transform(images)
    for ours, theirs in zip(singles, expected, strict=True):
        _assert_close_to_slideflow(ours, theirs)
    _assert_close_to_slideflow(batch, expected)
    # A batch is normalised exactly like each of its images alone.
    np.testing.assert_array_equal(batch, singles)
    # Channels-first torch tensors give the same as channels-last numpy arrays.
    as_torch = norm.transform(torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(as_torch.permute(0, 2, 3, 1).numpy(), batch)


@pytest.mark.parametrize("method", sorted(CLASSES))
def test_fit_to_target_reproduces_slideflow_fit(
    method: str, reference: dict[str, np.ndarray], reference_fits: dict[str, dict[str, list]]
) -> None:
    fit = CLASSES[method](reference["fit_target"]).get_fit()
    expected = reference_fits[f"{method}__target"]
    np.testing.assert_allclose(fit["stain_matrix"], expected["stain_matrix_target"], atol=1e-4)
    np.testing.assert_allclose(
        fit["max_concentrations"], expected["target_concentrations"], atol=1e-4
    )


@pytest.mark.parametrize("preset", ["v1", "v2", "v3"])
@pytest.mark.parametrize("method", sorted(CLASSES))
def test_presets_are_slideflows(
    method: str, preset: str, reference_fits: dict[str, dict[str, list]]
) -> None:
    fit = CLASSES[method](preset).get_fit()
    expected = reference_fits[f"{method}__{preset}"]
    np.testing.assert_allclose(fit["stain_matrix"], expected["stain_matrix_target"], rtol=1e-7)
    np.testing.assert_allclose(
        fit["max_concentrations"], expected["target_concentrations"], rtol=1e-7
    )
    assert fit == {k: np.asarray(v).tolist() for k, v in PRESETS[method][preset].items()}


@pytest.mark.parametrize("method", sorted(CLASSES))
def test_default_is_v3(method: str, reference: dict[str, np.ndarray]) -> None:
    images = reference["images"]
    v3 = CLASSES[method]("v3").transform(images)
    np.testing.assert_array_equal(CLASSES[method]().transform(images), v3)
    default = autoselect(method)
    assert type(default) is CLASSES[method]
    assert default.method == method
    np.testing.assert_array_equal(default.transform(images), v3)
    assert default.get_fit() == CLASSES[method]("v3").get_fit()


# ----------------------------------------------------------------------- batch invariance
@pytest.mark.parametrize("method", sorted(CLASSES))
def test_batch_equals_each_image_alone_with_threads(
    method: str, reference: dict[str, np.ndarray]
) -> None:
    # Larger, mixed images (tiles, the fit target, a blank tile) with several threads, so that
    # reductions may be split: each image's result must not depend on its companions.
    tiles = reference["images"]
    big = np.concatenate(
        [
            np.concatenate([tiles[0], tiles[1]], axis=1),
            np.concatenate([tiles[2], tiles[3]], axis=1),
        ],
        axis=0,
    )
    blank = np.full_like(big, 255)
    target = reference["fit_target"]
    batch = np.stack([big, target, blank, big[::-1], target.transpose(1, 0, 2)])
    norm = CLASSES[method]("v3")
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        together = norm.transform(batch)
        alone = np.stack([norm.transform(im) for im in batch])
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together[2], blank)  # too little tissue: unchanged


# ----------------------------------------------------------------------------- helpers
def test_torch_quantile_is_torch_quantile_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(60):
        n = int(torch.randint(2, 3000, (1,), generator=gen))
        if trial % 2:
            x = torch.randint(0, 256, (3, n), generator=gen).float()
        else:
            x = torch.randn(3, n, generator=gen)
        mask = torch.rand(3, n, generator=gen) > 0.3
        mask[:, :2] = True
        for q in (0.01, 0.1, 0.5, 0.9, 0.99):
            ours = torch_quantile(x, mask, q)
            for row in range(3):
                assert torch.equal(ours[row], torch.quantile(x[row][mask[row]], q)), (n, q)
            assert torch.equal(torch_quantile(x, None, q), torch.quantile(x, q, dim=-1))


def test_standardize_brightness_is_slideflows(reference: dict[str, np.ndarray]) -> None:
    images = torch.from_numpy(reference["images"])  # (B, H, W, 3)
    ours = standardize_brightness(images.permute(0, 3, 1, 2).reshape(len(images), 3, -1))
    for im, got in zip(images, ours, strict=True):
        # slideflow: p = quantile(I, 0.9) over every value; uint8(clip(I * 255.0 / p, 0, 255)).
        pixels = im.reshape(-1, 3)
        p = torch.quantile(pixels.float(), 0.9)
        expected = torch.clip(pixels * 255.0 / p, 0, 255).to(torch.uint8)
        assert torch.equal(got, expected.T)


def test_fast_and_standardized_differ_only_by_brightness(
    reference: dict[str, np.ndarray],
) -> None:
    images = torch.from_numpy(reference["images"]).permute(0, 3, 1, 2)
    flat = images.reshape(len(images), 3, -1)
    standardized = standardize_brightness(flat).reshape(images.shape)
    np.testing.assert_array_equal(
        Macenko("v3").transform(images).numpy(),
        MacenkoFast(PRESETS["macenko"]["v3"]).transform(standardized).numpy(),
    )
