"""``Features``: layer activations (and logits) of a model on tiles or a whole slide."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histobag.bags.config import build_normalizer
from histobag.bags.generate import build_normalizer_for_run
from histobag.errors import ExtractorArgumentError
from histobag.extraction import features_from_wsi, is_wsi
from histobag.extractors.preprocess import to_batch
from histobag.extractors.registry import build_feature_extractor, extractor_info
from histobag.extractors.saved import extractor_from_saved_model, is_saved_model
from histobag.tile_transforms import apply_tile_transforms, resolve_tile_transforms

__all__ = ["Features", "load_model_extractor", "split_logits"]

_DEFAULT_LAYERS = (None, "postconv", ["postconv"])


def load_model_extractor(
    model: Any,
    *,
    layers: str | Sequence[str] | None = None,
    include_logits: bool = False,
    tile_px: int | None = None,
    **kwargs: Any,
) -> Any:
    """A :class:`FeatureExtractor` from a saved-model folder, a registered name or a built one.

    Args:
        model: Saved model folder (see :func:`histobag.extractors.saved.save_model`), registered
            extractor name, or a built extractor (returned as it is).
        layers: Layer name(s) to take activations from (saved models, and registered models
            that accept ``layers=``, e.g. the ImageNet ones).
        include_logits: Append the classifier's logits (saved models only).
        tile_px: Tile size, for registered models that need it.
        **kwargs: Passed to the builder (``device``, ``mixed_precision``...).
    """
    if not isinstance(model, (str, os.PathLike)):
        if layers not in _DEFAULT_LAYERS or include_logits:
            raise ExtractorArgumentError(
                "layers= and include_logits= need a model path or name; a built extractor "
                "already has its layers."
            )
        return model
    if is_saved_model(model):
        return extractor_from_saved_model(
            model, layers=layers, include_logits=include_logits, **kwargs
        )
    if include_logits:
        raise ExtractorArgumentError(
            f"include_logits needs a saved model with a classifier; {model!r} is not a saved "
            "model folder."
        )
    spec = extractor_info(str(model))
    if layers not in _DEFAULT_LAYERS:  # models without a layers= argument give postconv
        kwargs["layers"] = layers
    if "tile_px" in spec.required_kwargs:
        if tile_px is None:
            raise ExtractorArgumentError(f"{model} needs tile_px=.")
        kwargs["tile_px"] = tile_px
    return build_feature_extractor(str(model), **kwargs)


def split_logits(extractor: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Split extractor output rows into (activations, logits or None)."""
    n = int(getattr(extractor, "num_logits", 0) or 0)
    if n == 0:
        return rows, None
    return rows[..., :-n], rows[..., -n:]


def saved_normalizer(extractor: Any) -> Any:
    """The stain normalizer recorded in a saved model's configuration, built (or None)."""
    config = (getattr(extractor, "extra", None) or {}).get("config") or {}
    if not config.get("normalizer"):
        return None
    return build_normalizer(config["normalizer"])


class Features:
    """Activations of any layer(s) of a model, on a batch of tiles or on a whole slide.

    Args:
        model: A saved model folder, a registered extractor name, or a built extractor.
        layers: Module name(s) whose pooled activations are concatenated; ``"postconv"``
            (default) is the pooled pre-logits output.
        include_logits: Also return the classifier's logits (saved models).
        normalizer: Stain normalizer (name or object); default the one recorded in a saved
            model, else none.
        tile_transforms: Registered tile transforms applied after the normalizer (names or
            ``{"name", "kwargs"}``; see :func:`histobag.tile_transforms.resolve_tile_transforms`).
        batch_size: Tiles per model call on a slide.
        num_workers: Tile-reading processes on a slide (``"auto"`` or an int).
        **kwargs: Passed to the extractor builder (``device``, ``mixed_precision``,
            ``tile_px`` for models that need it...).

    Example:
        >>> F = Features("models/tumor_resnet18", layers=["layer3", "postconv"],
        ...              include_logits=True)  # doctest: +SKIP
        >>> acts, logits = F(tiles_uint8)  # (B, F) and (B, n_classes)  # doctest: +SKIP
        >>> grid = F(wsi)[0]  # masked (rows, cols, F)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        layers: str | Sequence[str] | None = "postconv",
        include_logits: bool = False,
        *,
        normalizer: Any = "auto",
        tile_transforms: Any = None,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        **kwargs: Any,
    ) -> None:
        self.tile_transforms = resolve_tile_transforms(tile_transforms)
        self.extractor = load_model_extractor(
            model, layers=layers, include_logits=include_logits, **kwargs
        )
        self.include_logits = include_logits
        if normalizer == "auto":
            self.normalizer = saved_normalizer(self.extractor)
        else:
            self.normalizer = build_normalizer_for_run(normalizer)
        self.batch_size = batch_size
        self.num_workers = num_workers

    @property
    def num_features(self) -> int:
        """Length of the activation vector (logits excluded)."""
        return self.extractor.num_features - int(getattr(self.extractor, "num_logits", 0))

    def __call__(self, obj: Any) -> Any:
        """Activations of a uint8 batch or a :class:`~histobag.WSI`.

        Args:
            obj: numpy uint8 (B, H, W, 3) or (H, W, 3), a uint8 tensor (B, 3, H, W), or a WSI.

        Returns:
            For a batch: float32 (B, F), or ``(activations, logits)`` with ``include_logits``.
            For a WSI: a masked float32 grid (rows, cols, F) (background tiles masked), or
            ``(activations, logits)`` grids with ``include_logits``.
        """
        if is_wsi(obj):
            grid = features_from_wsi(
                self.extractor,
                obj,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                normalizer=self.normalizer,
                tile_transforms=self.tile_transforms,
            )
        else:
            batch = to_batch(obj).to(self.extractor.device)
            if self.normalizer is not None:  # as the engine does: stain-normalise, transform
                batch = self.normalizer.transform(batch)
            batch = apply_tile_transforms(batch, self.tile_transforms)
            grid = self.extractor.forward_batch(batch).cpu().numpy()
        activations, logits = split_logits(self.extractor, grid)
        return (activations, logits) if self.include_logits else activations

    def __repr__(self) -> str:
        path = (getattr(self.extractor, "extra", None) or {}).get("path")
        return (
            f"Features({Path(path).name if path else self.extractor.tag!r}, "
            f"num_features={self.num_features}, include_logits={self.include_logits})"
        )
