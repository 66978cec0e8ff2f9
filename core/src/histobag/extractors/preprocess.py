"""Preprocessing pipelines: a spec's defaults plus the user's overrides, run on the device.

Order: uint8 → float in [0, 1] → center crop → resize → normalise. A spec may declare
``resize_first`` (resize, then crop), as GigaPath's official pipeline does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from histobag.errors import ExtractorArgumentError
from histobag.specs import INTERPOLATIONS, Preprocessing

if TYPE_CHECKING:
    import torch
    from torchvision.transforms import v2


def _size(value: bool | int | None, default: int | None, input_size: int, what: str) -> int | None:
    """Resolve one of ``resize=``/``center_crop=``: None keeps the default, True means the
    model's input size, False means off, an int means that size."""
    if value is None:
        return default
    if value is True:
        return input_size
    if value is False:
        return None
    if isinstance(value, int) and value > 0:
        return value
    raise ExtractorArgumentError(
        f"{what} must be True, False, None or a positive int, not {value!r}"
    )


def resolve_preprocessing(
    default: Preprocessing,
    input_size: int,
    *,
    resize: bool | int | None = None,
    center_crop: bool | int | None = None,
    interpolation: str | None = None,
    antialias: bool | None = None,
    norm_mean: tuple[float, float, float] | None = None,
    norm_std: tuple[float, float, float] | None = None,
) -> Preprocessing:
    """Apply user overrides to a spec's default preprocessing.

    ``None`` keeps the model's default for each argument.
    """
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ExtractorArgumentError(
            f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {interpolation!r}"
        )
    return default.replace(
        resize=_size(resize, default.resize, input_size, "resize"),
        center_crop=_size(center_crop, default.center_crop, input_size, "center_crop"),
        interpolation=interpolation or default.interpolation,
        antialias=default.antialias if antialias is None else bool(antialias),
        mean=tuple(norm_mean) if norm_mean is not None else default.mean,
        std=tuple(norm_std) if norm_std is not None else default.std,
    )


def build_transform(pre: Preprocessing) -> v2.Compose:
    """The torchvision pipeline for ``pre``; it works on batched tensors on any device."""
    import torch
    from torchvision.transforms import InterpolationMode, v2

    steps: list[torch.nn.Module] = [v2.ToDtype(torch.float32, scale=True)]
    crop = v2.CenterCrop(pre.center_crop) if pre.center_crop else None
    resize = (
        v2.Resize(
            pre.resize, interpolation=InterpolationMode(pre.interpolation), antialias=pre.antialias
        )
        if pre.resize
        else None
    )
    ordered = (resize, crop) if pre.resize_first else (crop, resize)
    steps += [step for step in ordered if step is not None]
    steps.append(v2.Normalize(mean=list(pre.mean), std=list(pre.std)))
    return v2.Compose(steps)


def output_size(pre: Preprocessing, height: int, width: int) -> tuple[int, int]:
    """Spatial size the pipeline produces for a ``height`` × ``width`` input."""

    def crop(h: int, w: int) -> tuple[int, int]:
        return (pre.center_crop, pre.center_crop) if pre.center_crop else (h, w)

    def resize(h: int, w: int) -> tuple[int, int]:
        if not pre.resize:
            return h, w
        short, long_ = (h, w) if h <= w else (w, h)
        new_long = int(pre.resize * long_ / short)
        return (pre.resize, new_long) if h <= w else (new_long, pre.resize)

    if pre.resize_first:
        return crop(*resize(height, width))
    return resize(*crop(height, width))


def to_batch(images: object) -> torch.Tensor:
    """Turn user input into a uint8 (B, C, H, W) tensor.

    Accepts a numpy array (B, H, W, C) or (H, W, C) and a tensor (B, C, H, W) or (C, H, W).
    """
    import numpy as np
    import torch

    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ExtractorArgumentError(
                f"Expected uint8 images, got a {images.dtype} array. Pass raw RGB tiles "
                "(0-255); preprocessing and normalisation happen inside the extractor."
            )
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ExtractorArgumentError(
                f"Expected a numpy batch shaped (B, H, W, 3), got {images.shape}"
            )
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise ExtractorArgumentError(
                f"Expected a uint8 tensor, got {images.dtype}. Pass raw RGB tiles (0-255)."
            )
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ExtractorArgumentError(
                f"Expected a tensor batch shaped (B, 3, H, W), got {tuple(images.shape)}"
            )
        return images
    raise ExtractorArgumentError(
        f"Cannot extract features from a {type(images).__name__}. Pass a uint8 numpy batch "
        "(B, H, W, 3), a uint8 tensor (B, 3, H, W), a histobag.WSI or a .tfrecords path."
    )
