"""Stain normalizers: Macenko, Reinhard and Vahadane, as batched torch operations.

Every normalizer takes uint8 RGB tiles on any device and returns them normalised in place of
the originals (same shape, layout, dtype and device). Each has a JSON-serialisable fit, so a
feature bag can record exactly how its tiles were normalised::

    from histobag.norm import autoselect

    norm = autoselect("macenko")                   # Macenko's H&E reference ("v1")
    norm = autoselect("reinhard").fit("ref.png")   # or fit to your own reference tile(s)
    tiles = norm.transform(tiles)                  # uint8 (B, 3, H, W), any device
    config = {"method": norm.method, "fit": norm.get_fit()}
    same = autoselect(config["method"], config["fit"])

Importing this package does not import torch: the classes load on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from histobag.errors import HistobagError

if TYPE_CHECKING:
    from histobag.norm.base import StainNormalizer
    from histobag.norm.color import lab_to_rgb, rgb_to_lab
    from histobag.norm.macenko import Macenko
    from histobag.norm.reinhard import Reinhard, ReinhardMask
    from histobag.norm.vahadane import Vahadane

#: ``(name, "module:Class", description)`` of every built-in normalizer, for the plugin hook.
BUILTIN_NORMALIZERS: tuple[tuple[str, str, str], ...] = (
    (
        "macenko",
        "histobag.norm.macenko:Macenko",
        "Macenko stain separation (OD eigenvectors, percentile angles) to a reference H&E.",
    ),
    (
        "reinhard",
        "histobag.norm.reinhard:Reinhard",
        "Reinhard colour transfer: match per-channel L*a*b* mean and std of a reference.",
    ),
    (
        "reinhard_mask",
        "histobag.norm.reinhard:ReinhardMask",
        "Reinhard colour transfer on tissue pixels only (L* < 90); background untouched.",
    ),
    (
        "vahadane",
        "histobag.norm.vahadane:Vahadane",
        "Vahadane sparse non-negative stain separation (no SPAMS) to a reference H&E.",
    ),
)

_LAZY = {
    "StainNormalizer": "histobag.norm.base",
    "Macenko": "histobag.norm.macenko",
    "Reinhard": "histobag.norm.reinhard",
    "ReinhardMask": "histobag.norm.reinhard",
    "Vahadane": "histobag.norm.vahadane",
    "rgb_to_lab": "histobag.norm.color",
    "lab_to_rgb": "histobag.norm.color",
}

__all__ = [
    "BUILTIN_NORMALIZERS",
    "NORMALIZERS",
    "Macenko",
    "Reinhard",
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


def autoselect(
    method: str, fit: dict[str, Any] | str | None = None, **kwargs: Any
) -> StainNormalizer:
    """Build a stain normalizer by name.

    Args:
        method: One of ``"macenko"``, ``"reinhard"``, ``"reinhard_mask"``, ``"vahadane"``
            (case-insensitive).
        fit: A fit dictionary (as from :meth:`StainNormalizer.get_fit`), a preset name, or
            ``None`` for the default preset ``"v1"``.
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
        return cls("v1" if fit is None else fit, **kwargs)
    except TypeError as exc:
        raise HistobagError(f"bad arguments for stain normalizer {key!r}: {exc}") from exc
