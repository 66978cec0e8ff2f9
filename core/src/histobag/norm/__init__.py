"""Stain normalizers: Macenko, Reinhard and Vahadane, as batched torch operations.

Every normalizer takes uint8 RGB tiles on any device and returns them normalised in place of
the originals (same shape, layout, dtype and device). Each has a JSON-serialisable fit, so a
feature bag can record exactly how its tiles were normalised::

    from histobag.norm import autoselect

    norm = autoselect("macenko")                   # slideflow's default preset, "v3"
    norm = autoselect("reinhard").fit("ref.png")   # or fit to your own reference tile(s)
    tiles = norm.transform(tiles)                  # uint8 (B, 3, H, W), any device
    config = {"method": norm.method, "fit": norm.get_fit()}
    same = autoselect(config["method"], config["fit"])

Importing this package does not import torch: the classes load on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from histobag.builtin import BUILTIN_NORMALIZERS
from histobag.errors import HistobagError

if TYPE_CHECKING:
    from histobag.norm.base import StainNormalizer
    from histobag.norm.color import lab_to_rgb, rgb_to_lab
    from histobag.norm.legacy_macenko import LegacyMacenko
    from histobag.norm.legacy_reinhard import LegacyReinhard, LegacyReinhardMask
    from histobag.norm.legacy_vahadane import LegacyVahadane
    from histobag.norm.macenko import Macenko, MacenkoFast
    from histobag.norm.reinhard import Reinhard, ReinhardFast, ReinhardFastMask, ReinhardMask
    from histobag.norm.vahadane import Vahadane

    NORMALIZERS: dict[str, type[StainNormalizer]]
    """Every built-in normalizer class by method name (built on access; imports torch)."""


_LAZY = {
    "StainNormalizer": "histobag.norm.base",
    "Macenko": "histobag.norm.macenko",
    "MacenkoFast": "histobag.norm.macenko",
    "Reinhard": "histobag.norm.reinhard",
    "ReinhardFast": "histobag.norm.reinhard",
    "ReinhardMask": "histobag.norm.reinhard",
    "ReinhardFastMask": "histobag.norm.reinhard",
    "Vahadane": "histobag.norm.vahadane",
    "LegacyMacenko": "histobag.norm.legacy_macenko",
    "LegacyReinhard": "histobag.norm.legacy_reinhard",
    "LegacyReinhardMask": "histobag.norm.legacy_reinhard",
    "LegacyVahadane": "histobag.norm.legacy_vahadane",
    "rgb_to_lab": "histobag.norm.color",
    "lab_to_rgb": "histobag.norm.color",
}

__all__ = [
    "BUILTIN_NORMALIZERS",
    "NORMALIZERS",
    "LegacyMacenko",
    "LegacyReinhard",
    "LegacyReinhardMask",
    "LegacyVahadane",
    "Macenko",
    "MacenkoFast",
    "Reinhard",
    "ReinhardFast",
    "ReinhardFastMask",
    "ReinhardMask",
    "StainNormalizer",
    "Vahadane",
    "autoselect",
    "lab_to_rgb",
    "rgb_to_lab",
]


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def __getattr__(name: str) -> Any:
    # PEP 562: classes (and torch) are imported on first access, not with the package.
    if name == "NORMALIZERS":
        return {n: _load(target) for n, target, _ in BUILTIN_NORMALIZERS}
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def normalizer_config(normalizer: Any) -> dict[str, Any] | None:
    """``{"method": ..., "fit": {...}}`` of a stain normalizer (as recorded in
    ``bags_config.json``), or None."""
    if normalizer is None:
        return None
    return {"method": normalizer.method, "fit": normalizer.get_fit()}


def autoselect(
    method: str, fit: dict[str, Any] | str | None = None, **kwargs: Any
) -> StainNormalizer:
    """Build a stain normalizer by name.

    Args:
        method: A name in :data:`BUILTIN_NORMALIZERS` (case-insensitive): slideflow's
            ``macenko``, ``macenko_fast``, ``reinhard``, ``reinhard_fast``, ``reinhard_mask``,
            ``reinhard_fast_mask``, ``vahadane``, or a ``legacy_*`` method.
        fit: A fit dictionary (as from :meth:`StainNormalizer.get_fit`), a preset name, or
            ``None`` for the method's default preset (``"v3"``, as slideflow's).
        **kwargs: Hyperparameters for the normalizer's constructor (e.g. ``alpha=1``).

    Returns:
        A fitted :class:`StainNormalizer`.

    Raises:
        HistobagError: Unknown method, preset or hyperparameter, or an invalid fit.
    """
    targets = {n: target for n, target, _ in BUILTIN_NORMALIZERS}
    key = method.lower() if isinstance(method, str) else method
    if key not in targets:
        raise HistobagError(
            f"unknown stain normalizer {method!r}; available: {', '.join(sorted(targets))}."
        )
    cls = _load(targets[key])
    try:
        return cls("default" if fit is None else fit, **kwargs)
    except TypeError as exc:
        raise HistobagError(f"bad arguments for stain normalizer {key!r}: {exc}") from exc
