"""The legacy stain normalizers (histobag 0.1's macenko, reinhard, reinhard_mask, vahadane, kept
under legacy_* names so old bags rebuild exactly): behaviour on real histology, fits, layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color, data

import histobag.norm as hn
from histobag.errors import ConfigError, HistobagError
from histobag.norm import NORMALIZERS, autoselect
from histobag.norm import LegacyMacenko as Macenko
from histobag.norm import LegacyReinhard as Reinhard
from histobag.norm import LegacyReinhardMask as ReinhardMask
from histobag.norm import LegacyVahadane as Vahadane
from histobag.norm.color import lab_to_rgb, rgb_to_lab
from histobag.norm.ops import masked_quantile
from histobag.norm.presets import PRESETS

METHODS = ["legacy_macenko", "legacy_reinhard", "legacy_reinhard_mask", "legacy_vahadane"]
CORE_SRC = Path(hn.__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # The tensors here are small: one thread is fastest and immune to OpenMP oversubscription
    # on a busy machine. Results do not depend on it (test_batch_equals_each_image_alone_with_
    # threads checks the part that could).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    """scikit-image's bundled IHC image (512x512 RGB uint8): haematoxylin + DAB."""
    return data.immunohistochemistry()


def _shift_stains(img: np.ndarray) -> np.ndarray:
    """Re-stain an image: stronger haematoxylin, weaker DAB, some eosin (colour deconvolution)."""
    hed = color.rgb2hed(img)
    hed[..., 1] += 0.2 * hed[..., 2]
    hed[..., 0] *= 1.3
    hed[..., 2] *= 0.75
    return (np.clip(color.hed2rgb(hed), 0, 1) * 255).round().astype(np.uint8)


def _tiles(img: np.ndarray, size: int = 128) -> torch.Tensor:
    t = torch.from_numpy(img).permute(2, 0, 1)
    h, w = img.shape[:2]
    return torch.stack(
        [t[:, y : y + size, x : x + size] for y in range(0, h, size) for x in range(0, w, size)]
    ).contiguous()


@pytest.fixture(scope="module")
def tiles(ihc: np.ndarray) -> torch.Tensor:
    return _tiles(ihc)  # (16, 3, 128, 128)


@pytest.fixture(scope="module")
def shifted_tiles(ihc: np.ndarray) -> torch.Tensor:
    return _tiles(_shift_stains(ihc))


def _lab_means(batch: torch.Tensor) -> np.ndarray:
    # histobag's rgb_to_lab: matches skimage (test_rgb_to_lab_matches_scikit_image), is faster
    return rgb_to_lab(batch).mean(dim=(2, 3)).double().numpy()


# ----------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("method", METHODS)
def test_normalising_to_one_target_removes_a_stain_shift(method, tiles, shifted_tiles):
    before = np.linalg.norm(_lab_means(tiles) - _lab_means(shifted_tiles), axis=1).mean()
    assert before > 10  # the shift is a clearly visible colour difference

    norm = autoselect(method)  # preset "v1": an H&E target
    a, b = norm.transform(tiles), norm.transform(shifted_tiles)
    after = np.linalg.norm(_lab_means(a) - _lab_means(b), axis=1).mean()
    assert after < 0.35 * before
    # ...and both moved towards the target: the IHC image is brown/blue, the target pink/purple
    target_a_star = 20.4  # a* mean of the reinhard "v1" reference
    for out in (a, b):
        assert abs(_lab_means(out)[:, 1].mean() - target_a_star) < 10


@pytest.mark.parametrize("method", ["legacy_macenko", "legacy_vahadane"])
def test_normalised_tiles_carry_the_target_stains(method, tiles, shifted_tiles):
    norm = autoselect(method)
    target = torch.tensor(PRESETS[method]["v1"]["stain_matrix"], dtype=torch.float32)

    def angle_to_target(batch: torch.Tensor) -> float:
        est = norm.estimate_stains(batch)  # (B, 3, 2), unit columns
        return float(torch.rad2deg(torch.acos((est * target).sum(1).clamp(max=1))).mean())

    for batch in (tiles, shifted_tiles):
        before, after = angle_to_target(batch), angle_to_target(norm.transform(batch))
        assert before > 5
        assert after < min(3.5, 0.5 * before)


def test_reinhard_fit_then_transform_reproduces_target_statistics(ihc):
    norm = Reinhard(None).fit(ihc)
    fit = norm.get_fit()
    # the target itself barely changes...
    assert np.abs(norm.transform(ihc).astype(int) - ihc).mean() < 1.0
    # ...and a re-stained copy (L*a*b* means 7-16 units away) gets the target's statistics
    shifted = _shift_stains(ihc)
    assert np.abs(color.rgb2lab(shifted).reshape(-1, 3).mean(0) - fit["means"]).max() > 5
    lab = color.rgb2lab(norm.transform(shifted)).reshape(-1, 3)
    np.testing.assert_allclose(lab.mean(0), fit["means"], atol=0.3)
    np.testing.assert_allclose(lab.std(0), fit["stds"], rtol=0.03)


@pytest.mark.parametrize("method", ["legacy_macenko", "legacy_vahadane"])
def test_stain_methods_fit_then_transform_nearly_returns_target(method, ihc):
    img = ihc[:256]
    norm = autoselect(method).fit(img)
    out = norm.transform(img)
    diff = np.abs(out.astype(int) - img)
    assert diff.mean() < 4.0
    lab_shift = np.linalg.norm(color.rgb2lab(out).mean((0, 1)) - color.rgb2lab(img).mean((0, 1)))
    assert lab_shift < 2.0


def test_reinhard_mask_leaves_background_untouched(ihc):
    img = ihc.copy()
    img[:64] = 250  # a band of bright background (L* > 90)
    out = ReinhardMask().transform(img)
    assert np.array_equal(out[:64], img[:64])
    assert np.abs(out[64:].astype(int) - img[64:]).mean() > 10  # tissue is normalised
    # plain Reinhard tints the same background
    assert not np.array_equal(Reinhard().transform(img)[:64], img[:64])


def test_macenko_recovers_known_stain_vectors():
    # Synthetic image made from two known stains (Ruifrok & Johnston's haematoxylin and DAB).
    h = np.array([0.650, 0.704, 0.286])
    d = np.array([0.268, 0.570, 0.776])
    known = np.stack([h / np.linalg.norm(h), d / np.linalg.norm(d)], axis=1)  # (3, 2)
    rng = np.random.default_rng(0)
    n = 128 * 128
    kind = rng.integers(0, 3, n)  # pure first stain, pure second stain, mixtures
    conc = rng.uniform(0.6, 1.6, (n, 2))
    conc[kind == 0, 1] = 0
    conc[kind == 1, 0] = 0
    od = conc @ known.T
    img = np.clip(255 * np.exp(-od) - 1, 0, 255).round().astype(np.uint8).reshape(128, 128, 3)

    for norm in (Macenko(), Vahadane()):
        est = norm.estimate_stains(img).double().numpy()  # (3, 2), H first
        cos = (est * known).sum(0)
        assert cos.min() > 0.99, (type(norm).__name__, cos)
        fitted = np.array(type(norm)(None).fit(img).get_fit()["stain_matrix"])
        assert (fitted * known).sum(0).min() > 0.99


def _numpy_macenko_fit(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Textbook per-image Macenko (alpha 1, beta 0.15, Io 255) in NumPy, as a reference."""
    od = -np.log((img.reshape(-1, 3).astype(np.float64) + 1) / 255)
    tissue = od[~np.any(od < 0.15, axis=1)]
    _, vecs = np.linalg.eigh(np.cov(tissue.T))
    v = vecs[:, [2, 1]] * np.sign(vecs[:, 2].sum())  # principal axis into the positive octant
    phi = np.arctan2(tissue @ v[:, 1], tissue @ v[:, 0])
    lo, hi = np.percentile(phi, [1, 99])
    a, b = v @ [np.cos(lo), np.sin(lo)], v @ [np.cos(hi), np.sin(hi)]
    stains = np.stack([a, b] if a[0] > b[0] else [b, a], axis=1)
    conc = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    return stains, np.percentile(conc, 99, axis=1)


def test_macenko_matches_a_plain_numpy_reference(ihc, tiles):
    stains, max_c = _numpy_macenko_fit(ihc)
    fit = Macenko(None).fit(ihc).get_fit()
    np.testing.assert_allclose(fit["stain_matrix"], stains, atol=1e-9)
    np.testing.assert_allclose(fit["max_concentrations"], max_c, atol=1e-9)
    # transform = textbook recomposition of each tile's own estimate, in float32 on a batch
    norm = Macenko()
    target = np.array(PRESETS["legacy_macenko"]["v1"]["stain_matrix"])
    target_c = np.array(PRESETS["legacy_macenko"]["v1"]["max_concentrations"])
    out = norm.transform(tiles)
    for i in (0, 7, 13):
        img = tiles[i].permute(1, 2, 0).numpy()
        w, c99 = _numpy_macenko_fit(img)
        od = -np.log((img.reshape(-1, 3).astype(np.float64) + 1) / 255)
        conc = np.linalg.lstsq(w, od.T, rcond=None)[0] * (target_c / c99)[:, None]
        expected = np.clip(255 * np.exp(-(target @ conc)) - 1, 0, 255).round()
        got = out[i].permute(1, 2, 0).reshape(-1, 3).numpy().T
        assert np.abs(got - expected).max() <= 1


# --------------------------------------------------------------------------------- fits
@pytest.mark.parametrize("method", METHODS)
def test_get_fit_set_fit_round_trip_is_exact_and_json(method, ihc, tiles):
    tiles = tiles[::4]
    norm = NORMALIZERS[method](None).fit(ihc[:256])
    fit = norm.get_fit()
    assert set(fit) == set(type(norm).fit_shapes)
    text = json.dumps(fit)
    restored = NORMALIZERS[method](None).set_fit(**json.loads(text))
    assert restored.get_fit() == fit
    expected = norm.transform(tiles)
    assert torch.equal(expected, restored.transform(tiles))
    via_factory = autoselect(method, json.loads(text))
    assert torch.equal(expected, via_factory.transform(tiles))

    # all values are plain (nested lists of) Python floats
    def leaves(v):
        return [y for x in v for y in leaves(x)] if isinstance(v, list) else [v]

    assert all(type(x) is float for v in fit.values() for x in leaves(v))


@pytest.mark.parametrize("method", METHODS)
def test_fit_accepts_every_image_form_identically(method, ihc, tmp_path):
    img = ihc[:128, :128]
    path = tmp_path / "ref.png"
    Image.fromarray(img).save(path)
    chw = torch.from_numpy(img).permute(2, 0, 1)
    cls = NORMALIZERS[method]
    expected = cls(None).fit(img).get_fit()
    for target in (chw, chw.permute(1, 2, 0), Image.fromarray(img), path, str(path), [img]):
        assert cls(None).fit(target).get_fit() == expected, type(target)


@pytest.mark.parametrize("method", METHODS)
def test_fit_on_several_images_pools_their_pixels(method, ihc):
    a, b = ihc[:128], ihc[128:320]
    cls = NORMALIZERS[method]
    joint = cls(None).fit([a, torch.from_numpy(b).permute(2, 0, 1)]).get_fit()
    assert joint == cls(None).fit(np.concatenate([a, b])).get_fit()
    assert joint != cls(None).fit(a).get_fit()


def test_reinhard_presets_are_derived_from_the_documented_reference(ihc):
    reference = Macenko("v1").transform(ihc)
    for method in ("legacy_reinhard", "legacy_reinhard_mask"):
        fit = NORMALIZERS[method](None).fit(reference).get_fit()
        preset = PRESETS[method]["v1"]
        for key in ("means", "stds"):
            np.testing.assert_allclose(fit[key], preset[key], atol=0.02)


def test_bad_fits_and_targets_raise_helpful_errors(ihc):
    with pytest.raises(ConfigError, match="max_concentrations"):
        Macenko(None).set_fit(stain_matrix=[[1, 0], [0, 1], [0, 0]])
    with pytest.raises(ConfigError, match="shape"):
        Reinhard(None).set_fit(means=[1, 2], stds=[1, 1, 1])
    with pytest.raises(ConfigError, match="NaN"):
        Reinhard(None).set_fit(means=[1, 2, float("nan")], stds=[1, 1, 1])
    with pytest.raises(ConfigError, match="positive"):
        Reinhard(None).set_fit(means=[1, 2, 3], stds=[1, 0, 1])
    with pytest.raises(HistobagError, match="v1"):
        Macenko("no-such-preset")
    with pytest.raises(HistobagError, match="too little tissue"):
        Macenko(None).fit(np.full((64, 64, 3), 255, np.uint8))
    with pytest.raises(HistobagError, match="not fitted"):
        Vahadane(None).transform(ihc)
    with pytest.raises(HistobagError, match="uint8"):
        Macenko().transform(torch.rand(2, 3, 8, 8))
    with pytest.raises(HistobagError, match="permute"):
        Macenko().transform(torch.zeros(2, 8, 8, 3, dtype=torch.uint8))


def test_repr_shows_method_and_fit_state(ihc):
    assert repr(Macenko(None)).startswith("LegacyMacenko(method='legacy_macenko', fitted=False")
    assert "fitted=True (preset 'v1')" in repr(Vahadane())
    assert "fitted on 1 image" in repr(Reinhard(None).fit(ihc))
    assert "method='legacy_reinhard_mask'" in repr(ReinhardMask())


# --------------------------------------------------------------- batching and layouts
@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_each_image_alone(method, tiles, shifted_tiles):
    norm = autoselect(method)
    batch = torch.cat([tiles[:3], shifted_tiles[8:11]])
    out = norm.transform(batch)
    for i in range(len(batch)):
        assert torch.equal(out[i], norm.transform(batch[i])), i


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_each_image_alone_with_threads(method, ihc):
    # With several threads, a reduction over one image's pixels must not be split differently
    # when the image is alone than when it is in a batch. Torch splits only reductions of
    # more than 32768 elements, hence 192 x 192 tiles. (Few Vahadane rounds: same code, and
    # OpenMP is slow on an oversubscribed machine.)
    norm = autoselect(method, n_iter=2) if method == "legacy_vahadane" else autoselect(method)
    shifted = _shift_stains(ihc[:192, :192])
    batch = _tiles(np.concatenate([ihc[:192, :384], shifted], axis=1), size=192)
    stains = hasattr(norm, "estimate_stains")
    torch.set_num_threads(2)
    try:
        out = norm.transform(batch)
        alone = [norm.transform(img) for img in batch]
        # float intermediate results are more sensitive than uint8 outputs
        est = norm.estimate_stains(batch) if stains else None
        est_alone = [norm.estimate_stains(img) for img in batch] if stains else None
    finally:
        torch.set_num_threads(1)
    for i in range(len(batch)):
        assert torch.equal(out[i], alone[i]), i
        assert not stains or torch.equal(est[i], est_alone[i]), i


@pytest.mark.parametrize("method", METHODS)
def test_kind_layout_dtype_and_device_are_preserved(method, tiles):
    tiles = tiles[..., :64, :64].contiguous()
    norm = autoselect(method)
    ref = norm.transform(tiles[:3])
    assert ref.dtype == torch.uint8 and ref.shape == tiles[:3].shape
    assert ref.device == tiles.device and not torch.equal(ref, tiles[:3])

    hwc = tiles[:3].permute(0, 2, 3, 1).numpy().copy()
    out_np = norm.transform(hwc)  # numpy batch in, numpy batch out
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.uint8
    assert out_np.shape == hwc.shape and np.array_equal(out_np, ref.permute(0, 2, 3, 1).numpy())

    single_np = norm.transform(hwc[1])  # numpy (H, W, 3)
    assert single_np.shape == hwc[1].shape and np.array_equal(single_np, out_np[1])

    single = norm.transform(tiles[1])  # tensor (3, H, W)
    assert isinstance(single, torch.Tensor) and torch.equal(single, ref[1])

    channels_last = tiles[:3].contiguous(memory_format=torch.channels_last)
    assert torch.equal(norm.transform(channels_last), ref)
    assert norm(tiles[:3]).shape == ref.shape  # callable, as in a transform pipeline
    empty = norm.transform(tiles[:0])
    assert empty.shape == (0, 3, 64, 64)


@pytest.mark.parametrize("method", METHODS)
def test_blank_tiles_are_returned_unchanged(method, tiles):
    norm = autoselect(method)
    white = torch.full((3, 128, 128), 255, dtype=torch.uint8)
    nearly_white = (white.int() - torch.randint(0, 4, white.shape)).to(torch.uint8)
    batch = torch.stack([tiles[5], white, nearly_white, torch.zeros_like(white)])
    out = norm.transform(batch)
    assert torch.equal(out[1], white)
    assert torch.equal(out[2], nearly_white)
    assert torch.equal(out[0], norm.transform(tiles[5]))  # neighbours do not interfere
    if not method.startswith("legacy_reinhard"):  # black is "tissue" to Reinhard (L* < 90)
        assert torch.equal(out[3], batch[3])  # one flat colour: no stains to separate


# ------------------------------------------------------------------ building blocks
def test_rgb_to_lab_matches_scikit_image(ihc):
    levels = np.arange(0, 256, 15, dtype=np.uint8)
    cube = np.stack(np.meshgrid(levels, levels, levels), -1).reshape(1, -1, 3)
    for img in (ihc[:128], cube):
        ours = rgb_to_lab(torch.from_numpy(img), dim=-1).double().numpy()
        np.testing.assert_allclose(ours, color.rgb2lab(img), atol=2e-3)
        # float input in [0, 1], channels first
        chw = torch.from_numpy(img).permute(2, 0, 1).double() / 255
        np.testing.assert_allclose(
            rgb_to_lab(chw).permute(1, 2, 0).numpy(), color.rgb2lab(img), atol=1e-8
        )
        back = lab_to_rgb(torch.from_numpy(color.rgb2lab(img)), dim=-1).numpy()
        np.testing.assert_allclose(back, color.lab2rgb(color.rgb2lab(img)), atol=1e-8)
        assert np.array_equal((back * 255).round().astype(np.uint8), img)


def test_masked_quantile_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 300))
    mask = rng.random((5, 300)) < np.array([[0.9], [0.5], [0.1], [0.02], [0.0]])
    for q in (0.0, 0.01, 0.3, 0.5, 0.99, 1.0):
        got = masked_quantile(torch.from_numpy(x), torch.from_numpy(mask), q).numpy()
        for i in range(4):
            assert got[i] == pytest.approx(np.quantile(x[i][mask[i]], q), abs=1e-12)
        assert got[4] == 0  # no selected entries
        np.testing.assert_allclose(
            masked_quantile(torch.from_numpy(x), None, q).numpy(), np.quantile(x, q, axis=1)
        )


# ----------------------------------------------------------------- factory, registry
def test_autoselect_and_registry():
    assert set(METHODS) <= set(NORMALIZERS)
    for name, target, description in hn.BUILTIN_NORMALIZERS:
        module, attr = target.split(":")
        cls = getattr(__import__(module, fromlist=[attr]), attr)
        assert cls is NORMALIZERS[name] and cls.method == name and description
    norm = autoselect("LEGACY_MACENKO", "v1", alpha=2)
    assert isinstance(norm, Macenko) and norm.alpha == 2 and norm.fitted
    assert autoselect("legacy_reinhard").get_fit() == PRESETS["legacy_reinhard"]["v1"]
    with pytest.raises(HistobagError) as err:
        autoselect("histogram")
    assert all(name in str(err.value) for name in METHODS)
    with pytest.raises(HistobagError, match="bad arguments"):
        autoselect("legacy_reinhard", beta=0.1)


def test_importing_histobag_norm_does_not_import_torch():
    code = (
        "import sys, histobag.norm as n; n.autoselect; n.BUILTIN_NORMALIZERS; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(CORE_SRC), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
