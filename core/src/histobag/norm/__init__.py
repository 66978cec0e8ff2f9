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

#: ``(name, "module:Class", description)`` of every built-in normalizer, for the plugin hook.
#: The first seven carry slideflow's names with slideflow's meaning; ``legacy_*`` are the
#: transforms histobag called ``macenko``, ``reinhard``, ``reinhard_mask`` and ``vahadane``
#: before, kept so that bags made with them rebuild exactly (see :mod:`histobag.bags_config`).
BUILTIN_NORMALIZERS: tuple[tuple[str, str, str], ...] = (
    (
        "macenko",
        "histobag.norm.macenko:Macenko",
        "slideflow's macenko: brightness standardised, then Macenko stain separation.",
    ),
    (
        "macenko_fast",
        "histobag.norm.macenko:MacenkoFast",
        "slideflow's macenko_fast: Macenko stain separation without brightness standardisation.",
    ),
    (
        "reinhard",
        "histobag.norm.reinhard:Reinhard",
        "slideflow's reinhard: brightness standardised, then L*a*b* mean/std transfer.",
    ),
    (
        "reinhard_fast",
        "histobag.norm.reinhard:ReinhardFast",
        "slideflow's reinhard_fast: L*a*b* mean/std transfer without brightness standardisation.",
    ),
    (
        "reinhard_mask",
        "histobag.norm.reinhard:ReinhardMask",
        "slideflow's reinhard_mask: as reinhard, statistics and transfer on tissue pixels only.",
    ),
    (
        "reinhard_fast_mask",
        "histobag.norm.reinhard:ReinhardFastMask",
        "slideflow's reinhard_fast_mask: as reinhard_fast, on tissue pixels only.",
    ),
    (
        "vahadane",
        "histobag.norm.vahadane:Vahadane",
        "slideflow's vahadane (sklearn): sparse non-negative stain separation, no SPAMS.",
    ),
    (
        "legacy_macenko",
        "histobag.norm.legacy_macenko:LegacyMacenko",
        "histobag <= 0.1's macenko (slideflow's macenko_fast, within 1 level).",
    ),
    (
        "legacy_reinhard",
        "histobag.norm.legacy_reinhard:LegacyReinhard",
        "histobag <= 0.1's reinhard (slideflow's reinhard_fast, within 4 levels).",
    ),
    (
        "legacy_reinhard_mask",
        "histobag.norm.legacy_reinhard:LegacyReinhardMask",
        "histobag <= 0.1's reinhard_mask (tissue pixels with L* < 90).",
    ),
    (
        "legacy_vahadane",
        "histobag.norm.legacy_vahadane:LegacyVahadane",
        "histobag <= 0.1's vahadane (20 block-coordinate rounds from the Macenko estimate).",
    ),
)

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
