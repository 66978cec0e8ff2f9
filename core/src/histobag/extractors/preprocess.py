"""Preprocessing pipelines: a spec's defaults plus the user's overrides, run on the device.

:class:`PreprocessingOverrides` is the one definition of the preprocessing arguments users may
pass to any extractor, with their checks.

Order: uint8 → float in [0, 1] → center crop → resize → normalise. A spec may declare
``resize_first`` (resize, then crop), as GigaPath's official pipeline does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from histobag.errors import ExtractorArgumentError
from histobag.specs import INTERPOLATIONS, Preprocessing

if TYPE_CHECKING:
    import torch
    from torchvision.transforms import v2


@dataclass(frozen=True)
class PreprocessingOverrides:
    """The user's changes to a model's default preprocessing; ``None`` keeps the default.

    The one list of the preprocessing arguments every extractor accepts (in
    :func:`histobag.build_feature_extractor`, saved-model folders and the "Accepted: ..."
    line of argument errors). Values are checked when the object is made, so a bad value
    recorded in a ``bags_config.json`` is refused before anything is built.

    Attributes:
        resize: ``True`` resizes the shorter side to the model's input size, an int to that
            size, ``False`` disables resizing.
        center_crop: Like ``resize``, for a square center crop. Crop runs before resize
            unless the model declares resize-then-crop (e.g. GigaPath).
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        antialias: Antialias when resizing.
        norm_mean: Normalisation mean (R, G, B on the [0, 1] scale).
        norm_std: Normalisation standard deviation (R, G, B, each above 0).

    Raises:
        ExtractorArgumentError: A value of the wrong kind, naming the argument and the value.
    """

    resize: bool | int | None = None
    center_crop: bool | int | None = None
    interpolation: str | None = None
    antialias: bool | None = None
    norm_mean: tuple[float, float, float] | None = None
    norm_std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("resize", "center_crop"):
            _check_size(name, getattr(self, name))
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ExtractorArgumentError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"not {self.interpolation!r}"
            )
        if self.antialias is not None and not isinstance(self.antialias, bool):
            raise ExtractorArgumentError(
                f"antialias must be True, False or None, not {self.antialias!r}."
            )
        for name in ("norm_mean", "norm_std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _rgb(name, value, positive=name == "norm_std"))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The argument names, in the order they are documented."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def split(cls, kwargs: Mapping[str, Any]) -> tuple[PreprocessingOverrides, dict[str, Any]]:
        """Separate the preprocessing arguments from the others (model-specific ones).

        Returns:
            The overrides, and the remaining keyword arguments.
        """
        names = cls.names()
        overrides = cls(**{k: v for k, v in kwargs.items() if k in names})
        return overrides, {k: v for k, v in kwargs.items() if k not in names}

    def apply(self, default: Preprocessing, input_size: int) -> Preprocessing:
        """``default`` with these overrides applied (``True`` sizes mean ``input_size``)."""

        def size(value: bool | int | None, current: int | None) -> int | None:
            if value is None:
                return current
            if isinstance(value, bool):
                return input_size if value else None
            return value

        return default.replace(
            resize=size(self.resize, default.resize),
            center_crop=size(self.center_crop, default.center_crop),
            interpolation=self.interpolation or default.interpolation,
            antialias=default.antialias if self.antialias is None else self.antialias,
            mean=default.mean if self.norm_mean is None else self.norm_mean,
            std=default.std if self.norm_std is None else self.norm_std,
        )

    def recorded(self) -> dict[str, Any]:
        """The overrides given (not ``None``) in JSON form, as recorded by
        :meth:`~histobag.extractors.base.FeatureExtractor.dump_config`."""
        out: dict[str, Any] = {}
        for name in self.names():
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out


def _check_size(name: str, value: Any) -> None:
    """``resize=``/``center_crop=``: None, True, False or a positive int."""
    if value is None or isinstance(value, bool):
        return
    if not isinstance(value, int) or value <= 0:
        raise ExtractorArgumentError(
            f"{name} must be True, False, None or a positive int, not {value!r}"
        )


def _rgb(name: str, value: Any, *, positive: bool) -> tuple[float, float, float]:
    """Three finite numbers (each above 0 when ``positive``), as a tuple of floats."""
    numbers: list[float] = []
    if not isinstance(value, (str, bytes)):
        try:
            numbers = [float(v) for v in value]
        except (TypeError, ValueError):
            numbers = []
    if (
        len(numbers) != 3
        or not all(math.isfinite(x) for x in numbers)
        or (positive and min(numbers) <= 0)
    ):
        raise ExtractorArgumentError(
            f"{name} must be three finite numbers (R, G, B on the [0, 1] scale"
            + (", each above 0" if positive else "")
            + f"), not {value!r}."
        )
    return (numbers[0], numbers[1], numbers[2])


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
