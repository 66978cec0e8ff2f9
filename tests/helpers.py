"""Helpers shared by the tests of all four distributions (import as ``tests.helpers``)."""

from __future__ import annotations

import numpy as np


def histology_image() -> np.ndarray:
    """scikit-image's bundled immunohistochemistry image (512, 512, 3) uint8."""
    from skimage import data

    return data.immunohistochemistry()


def histology_tiles(n: int = 4, size: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` real histology tiles (n, size, size, 3) uint8, cropped (and upscaled if needed)
    from the bundled image at deterministic positions."""
    from PIL import Image

    image = histology_image()
    rng = np.random.default_rng(seed)
    crop = min(size, 256)
    tiles = []
    for _ in range(n):
        y, x = rng.integers(0, image.shape[0] - crop, size=2)
        tile = image[y : y + crop, x : x + crop]
        if crop != size:
            tile = np.asarray(Image.fromarray(tile).resize((size, size), Image.BICUBIC))
        tiles.append(tile)
    return np.stack(tiles)


def perturb_(module, seed: int = 0, scale: float = 0.5) -> None:
    """Add noise to every floating parameter and buffer in place (LayerNorm weights, LayerScale
    gammas, BatchNorm statistics...), so a scrambled key mapping cannot pass a parity test.
    Variances stay positive."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator) * scale
            if name.endswith("running_var"):
                tensor.mul_(noise.exp())
            else:
                tensor.add_(noise * (tensor.std() if tensor.numel() > 1 else 1.0) + noise * 0.02)


def assert_full_size_timm_layout(name: str, arch: str, kwargs: dict, million_params: float) -> None:
    """On the ``meta`` device, the registered extractor's weights target has exactly the keys and
    shapes of ``timm.create_model(arch, **kwargs)`` (the official checkpoint's layout), the
    reference has the published parameter count, and the input size is fixed exactly when
    the reference has no dynamic image size."""
    import pytest
    import timm
    import torch

    import histobag

    def layout(module) -> dict:
        return {key: tuple(value.shape) for key, value in module.state_dict().items()}

    spec = histobag.extractor_info(name)
    with torch.device("meta"):
        build = spec.load_factory()(spec)
        reference = timm.create_model(arch, pretrained=False, **kwargs)
    assert layout(build.weights_target) == layout(reference)
    n_params = sum(p.numel() for p in reference.parameters())
    assert n_params == pytest.approx(million_params * 1e6, rel=0.005)
    expected_fixed = None if reference.dynamic_img_size else spec.input_size
    assert build.fixed_input_size == expected_fixed
