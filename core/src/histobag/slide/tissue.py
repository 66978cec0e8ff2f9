"""Tissue detection on thumbnails and the per-tile grayspace / whitespace filters.

Two stages, as in slideflow:

1. A slide-level tissue mask computed once on a thumbnail decides which grid positions are
   tiled at all (:func:`grid_fraction`). Tissue detectors are plugins (the
   ``histobag_tissue_detectors`` hook); :func:`resolve_tissue_detector` turns what a user
   passes as ``tissue=`` into a detector and the record kept in ``bags_config.json``. Core
   provides ``hsv`` (:mod:`histobag.slide.tissue_hsv`, the default) and ``otsu``
   (:func:`otsu_tissue_mask`, the default before).
2. Per-tile filters (:func:`tile_filter_mask`) look at the pixels of each tile as it is read and
   drop mostly-gray (unstained) or mostly-white tiles.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from histobag import plugins
from histobag.slide.errors import TileSettingsError
from histobag.specs import DEFAULT_TISSUE_DETECTOR, LEGACY_TISSUE_DETECTOR

__all__ = [
    "DEFAULT_TISSUE_DETECTOR",
    "LEGACY_TISSUE_DETECTOR",
    "OtsuDetector",
    "TissueDetector",
    "build_otsu",
    "grayspace_fraction",
    "grid_fraction",
    "otsu_tissue_mask",
    "resolve_tissue_detector",
    "saturation",
    "tile_filter_mask",
    "tissue_record",
    "whitespace_fraction",
]

#: A tissue detector maps an RGB uint8 thumbnail (H, W, 3) at ``mpp`` µm/px, called as
#: ``detector(thumbnail, mpp=mpp)``, to a bool mask (H, W). (Before detectors were plugins
#: they took the thumbnail alone; :func:`resolve_tissue_detector` still accepts those.)
TissueDetector = Callable[..., np.ndarray]


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of uint8 RGB pixels (any leading shape, last axis 3).

    Same definition as ``skimage.color.rgb2hsv``: ``(max - min) / max``, 0 where max is 0.
    """
    rgb = np.asarray(rgb)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # Element-wise max/min over three channel views is much faster than reducing axis -1.
    hi = np.maximum(np.maximum(r, g), b).astype(np.float32)
    lo = np.minimum(np.minimum(r, g), b).astype(np.float32)
    np.subtract(hi, lo, out=lo)
    np.divide(lo, hi, out=lo, where=hi > 0)
    return lo


def otsu_tissue_mask(thumbnail: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Tissue mask of an RGB thumbnail: Otsu's threshold on its (smoothed) HSV saturation.

    Stained tissue is saturated, glass and background are gray or white. A Gaussian blur of
    ``sigma`` thumbnail pixels first removes speckle (a fast stand-in for slideflow's median
    blur; :class:`~histobag.slide.WSI` passes 8 µm/px thumbnails, so 2 px is 16 µm). A
    thumbnail of a single colour gives an all-False mask.

    Args:
        thumbnail: uint8 array (H, W, 3).
        sigma: Gaussian blur in thumbnail pixels before thresholding; 0 disables it.

    Returns:
        Bool array (H, W), True on tissue.
    """
    sat = saturation(thumbnail)
    if sigma > 0:
        sat = ndimage.gaussian_filter(sat, sigma=sigma)
    if float(sat.max() - sat.min()) < 1e-3:
        return np.zeros(sat.shape, dtype=bool)
    return sat > threshold_otsu(sat)


def grid_fraction(
    mask: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    extent: int,
    dimensions: tuple[int, int],
) -> np.ndarray:
    """Fraction of each grid tile's footprint that is True in a thumbnail-sized ``mask``.

    Args:
        mask: Bool (h, w) mask covering the whole slide.
        xs: Level-0 x of each grid column's left edge.
        ys: Level-0 y of each grid row's top edge.
        extent: Tile side in level-0 pixels.
        dimensions: Level-0 (width, height) of the slide.

    Returns:
        Float array (len(ys), len(xs)). Parts of a tile beyond the slide count as False.
    """
    h, w = mask.shape
    sx, sy = w / dimensions[0], h / dimensions[1]

    def bounds(starts: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        lo = np.floor(starts * scale).astype(np.int64)
        hi = np.maximum(lo + 1, np.ceil((starts + extent) * scale).astype(np.int64))
        return lo, hi

    x0, x1 = bounds(np.asarray(xs, dtype=np.float64), sx)
    y0, y1 = bounds(np.asarray(ys, dtype=np.float64), sy)
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    # Summed-area table: O(1) per tile whatever the tile size.
    table = np.zeros((h + 1, w + 1), dtype=np.int64)
    table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    cx0, cx1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    cy0, cy1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    inside = (
        table[cy1[:, None], cx1[None, :]]
        - table[cy0[:, None], cx1[None, :]]
        - table[cy1[:, None], cx0[None, :]]
        + table[cy0[:, None], cx0[None, :]]
    )
    return inside / area


def grayspace_fraction(tiles: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """Per tile, the fraction of pixels whose HSV saturation is below ``threshold``.

    Args:
        tiles: uint8 (N, H, W, 3).
        threshold: Saturation in [0, 1] under which a pixel counts as gray.
    """
    return (saturation(tiles) < threshold).mean(axis=(1, 2))


def whitespace_fraction(tiles: np.ndarray, threshold: int = 230) -> np.ndarray:
    """Per tile, the fraction of pixels whose R, G and B all exceed ``threshold``.

    Args:
        tiles: uint8 (N, H, W, 3).
        threshold: Brightness (0-255) above which every channel must be for a white pixel.
    """
    tiles = np.asarray(tiles)
    white = (tiles[..., 0] > threshold) & (tiles[..., 1] > threshold) & (tiles[..., 2] > threshold)
    return white.mean(axis=(1, 2))


def tile_filter_mask(
    tiles: np.ndarray,
    grayspace_fraction_max: float = 0.6,
    grayspace_threshold: float = 0.05,
    whitespace_fraction_max: float = 1.0,
    whitespace_threshold: int = 230,
) -> np.ndarray:
    """Which tiles pass slideflow's grayspace and whitespace filters.

    A tile is discarded when its gray fraction exceeds ``grayspace_fraction_max`` or its white
    fraction exceeds ``whitespace_fraction_max``; a maximum of 1.0 or more disables that filter
    (slideflow's defaults: grayspace 0.6 at saturation 0.05, whitespace off).

    Args:
        tiles: uint8 (N, H, W, 3).
        grayspace_fraction_max: Largest allowed fraction of gray pixels.
        grayspace_threshold: Saturation under which a pixel is gray.
        whitespace_fraction_max: Largest allowed fraction of white pixels.
        whitespace_threshold: Brightness above which a pixel is white.

    Returns:
        Bool array (N,), True for tiles to keep. Fractions are computed on every other pixel
        of every other row.
    """
    keep = np.ones(len(tiles), dtype=bool)
    # Fractions are estimated on every other pixel in each direction: 4x less work, and a
    # quarter of a tile's pixels estimates a fraction to well under a percent.
    tiles = np.asarray(tiles)[:, ::2, ::2]
    if grayspace_fraction_max < 1.0:
        keep &= grayspace_fraction(tiles, grayspace_threshold) <= grayspace_fraction_max
    if whitespace_fraction_max < 1.0:
        keep &= whitespace_fraction(tiles, whitespace_threshold) <= whitespace_fraction_max
    return keep


@dataclass(frozen=True)
class OtsuDetector:
    """The ``otsu`` tissue detector: :func:`otsu_tissue_mask` with a fixed blur.

    Attributes:
        sigma: Gaussian blur in thumbnail pixels before thresholding (``mpp`` is ignored, as
            it always was: thumbnails are at a fixed resolution).
    """

    sigma: float = 2.0

    def __call__(self, thumbnail: np.ndarray, mpp: float | None = None) -> np.ndarray:
        """Tissue mask of ``thumbnail`` (uint8 (H, W, 3)); bool (H, W)."""
        return otsu_tissue_mask(thumbnail, sigma=self.sigma)

    def to_dict(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this detector (recorded in ``bags_config.json``)."""
        return {"sigma": self.sigma}


def build_otsu(sigma: float = 2.0) -> OtsuDetector:
    """Factory of the ``otsu`` tissue detector (Otsu on the blurred HSV saturation).

    Args:
        sigma: Gaussian blur in thumbnail pixels; 0 disables it.
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0:
        raise ValueError(f"sigma must be a number >= 0, got {sigma!r}")
    return OtsuDetector(float(sigma))


class _ThumbnailOnly:
    """Adapts a detector of the old contract (thumbnail only) to ``detector(thumb, mpp=...)``.

    A class rather than a closure so that it pickles whenever the detector does.
    """

    def __init__(self, detector: Callable[[np.ndarray], np.ndarray]) -> None:
        self.detector = detector

    def __call__(self, thumbnail: np.ndarray, mpp: float | None = None) -> np.ndarray:
        return self.detector(thumbnail)

    def __repr__(self) -> str:
        return f"_ThumbnailOnly({self.detector!r})"


def _takes_mpp(detector: Callable[..., Any]) -> bool:
    """Whether ``detector`` accepts an ``mpp`` keyword argument."""
    try:
        parameters = inspect.signature(detector).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): the old contract
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == "mpp" and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in parameters
    )


def _callable_name(detector: Callable[..., Any]) -> str:
    """``"module:qualname"`` of a user's detector, for the record."""
    target = detector if hasattr(detector, "__qualname__") else type(detector)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}:{getattr(target, '__qualname__', repr(target))}"


def _json_kwargs(name: str, kwargs: Any) -> dict[str, Any]:
    """``kwargs`` as a JSON round trip (lists for tuples), or a clear error."""
    if not isinstance(kwargs, dict):
        raise TileSettingsError(
            f"tissue detector {name!r}: kwargs must be a dict, got {type(kwargs).__name__}."
        )
    try:
        return json.loads(json.dumps(kwargs, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise TileSettingsError(
            f"tissue detector {name!r}: kwargs must be JSON-able (they are recorded in "
            f"bags_config.json): {error}"
        ) from None


def resolve_tissue_detector(
    tissue: str | dict[str, Any] | TissueDetector | None,
) -> tuple[TissueDetector | None, dict[str, Any] | None]:
    """Turn a ``tissue=`` argument into a detector and the record of it for the bags config.

    Args:
        tissue: One of

            - ``None``: no tissue detection;
            - a registered detector's name, e.g. ``"otsu"`` or ``"hsv"``, with its defaults;
            - ``{"name": <registered name>, "kwargs": {...}}`` (``kwargs`` optional, JSON-able);
            - a callable: ``detector(thumbnail, mpp=...)``, or ``detector(thumbnail)`` (the
              contract before detectors were plugins), wrapped to accept ``mpp``.

    Returns:
        ``(detector, record)``: the detector, called as ``detector(thumbnail, mpp=mpp)``, and
        ``{"name": ..., "kwargs": {...}}`` to record (both ``None`` for ``None``). The record's
        kwargs are every parameter, defaults included, when the detector tells them (a
        ``to_dict()`` method), else those given. A callable is recorded as
        ``{"name": "module:qualname", "kwargs": <its to_dict(), or {}>}``.

    Raises:
        TileSettingsError: Unknown name, malformed dict, kwargs that are not JSON-able or
            that the detector refuses.

    Example:
        >>> detector, record = resolve_tissue_detector({"name": "otsu", "kwargs": {"sigma": 1}})
        >>> record
        {'name': 'otsu', 'kwargs': {'sigma': 1.0}}
    """
    if tissue is None:
        return None, None
    if callable(tissue):
        detector = tissue if _takes_mpp(tissue) else _ThumbnailOnly(tissue)
        to_dict = getattr(tissue, "to_dict", None)
        name = _callable_name(tissue)
        return detector, {
            "name": name,
            "kwargs": _json_kwargs(name, to_dict()) if callable(to_dict) else {},
        }
    if isinstance(tissue, dict):
        unknown = set(tissue) - {"name", "kwargs"}
        if "name" not in tissue or unknown or not isinstance(tissue["name"], str):
            raise TileSettingsError(
                "tissue as a dict must be {'name': <registered detector>, 'kwargs': {...}}, "
                f"got {tissue!r}."
            )
        name, kwargs = tissue["name"], tissue.get("kwargs") or {}
    elif isinstance(tissue, str):
        name, kwargs = tissue, {}
    else:
        name, kwargs = None, {}
    specs = plugins.tissue_detector_specs()
    if name not in specs:
        raise TileSettingsError(
            f"tissue must be None, a callable, a registered tissue detector "
            f"({', '.join(sorted(specs))}) or {{'name': ..., 'kwargs': {{...}}}}, got {tissue!r}."
        )
    kwargs = _json_kwargs(name, kwargs)
    try:
        detector = specs[name].load()(**kwargs)
    except (TypeError, ValueError) as error:
        raise TileSettingsError(f"tissue detector {name!r}: {error}") from None
    to_dict = getattr(detector, "to_dict", None)
    recorded = _json_kwargs(name, to_dict()) if callable(to_dict) else kwargs
    return detector, {"name": name, "kwargs": recorded}


def tissue_record(
    tissue: str | dict[str, Any] | TissueDetector | None,
) -> dict[str, Any] | None:
    """What ``bags_config.json`` records of a ``tissue=`` argument: ``{"name", "kwargs"}``
    with every parameter, defaults included (``None`` for no tissue detection).

    Example:
        >>> tissue_record("otsu")
        {'name': 'otsu', 'kwargs': {'sigma': 2.0}}
    """
    return resolve_tissue_detector(tissue)[1]
