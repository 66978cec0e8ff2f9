"""Tile sizes in micrometres or as a magnification (``"20x"``), and their conversions.

Convention: a magnification of ``M`` means ``10 / M`` µm per pixel (10x = 1.0 mpp,
20x = 0.5 mpp, 40x = 0.25 mpp), so a ``tile_px`` tile at ``M`` spans ``tile_px * 10 / M`` µm.
"""

from __future__ import annotations

import numbers
import re

from histobag.slide.errors import TileSettingsError

__all__ = [
    "TileUm",
    "format_tile_um",
    "is_magnification",
    "magnification_to_mpp",
    "parse_magnification",
    "tile_microns",
]

#: A tile size: micrometres (int or float) or a magnification string such as ``"20x"``.
TileUm = int | float | str

_MAG = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[xX]\s*$")


def is_magnification(tile_um: TileUm) -> bool:
    """Whether ``tile_um`` is a magnification string such as ``"20x"`` or ``"2.5x"``."""
    return isinstance(tile_um, str) and _MAG.match(tile_um) is not None


def parse_magnification(mag: str) -> float:
    """Return the numeric magnification of a string like ``"20x"`` (returns ``20.0``).

    Raises:
        TileSettingsError: ``mag`` is not a positive magnification string.
    """
    match = _MAG.match(mag) if isinstance(mag, str) else None
    value = float(match.group(1)) if match else 0.0
    if value <= 0:
        raise TileSettingsError(
            f"{mag!r} is not a magnification; write it like '20x', '40x' or '2.5x', "
            "or give tile_um in micrometres as a number."
        )
    return value


def magnification_to_mpp(mag: str | float) -> float:
    """Micrometres per pixel at a magnification (``"20x"`` or ``20``): ``10 / mag``."""
    value = parse_magnification(mag) if isinstance(mag, str) else float(mag)
    if value <= 0:
        raise TileSettingsError(f"Magnification must be positive, got {mag!r}.")
    return 10.0 / value


def tile_microns(tile_px: int, tile_um: TileUm) -> float:
    """Return the side of a tile in micrometres, from ``tile_um`` in µm or as a magnification.

    Args:
        tile_px: Tile side in pixels, as the model sees it.
        tile_um: Tile side in µm (int or float), or a magnification such as ``"20x"``.

    Raises:
        TileSettingsError: ``tile_px`` is not a positive integer or ``tile_um`` is neither a
            positive number nor a magnification string.
    """
    if isinstance(tile_px, bool) or not isinstance(tile_px, numbers.Integral) or tile_px <= 0:
        raise TileSettingsError(f"tile_px must be a positive integer, got {tile_px!r}.")
    if isinstance(tile_um, str):
        return tile_px * magnification_to_mpp(tile_um)
    if isinstance(tile_um, bool) or not isinstance(tile_um, numbers.Real) or not tile_um > 0:
        raise TileSettingsError(
            f"tile_um must be a positive number of micrometres or a magnification such as "
            f"'20x', got {tile_um!r}."
        )
    return float(tile_um)


def format_tile_um(tile_um: TileUm) -> str:
    """Return a folder-name label: ``128`` -> ``'128um'``, ``'20X'`` -> ``'20x'``."""
    if isinstance(tile_um, str):
        value = parse_magnification(tile_um)
        return f"{value:g}x"
    tile_microns(1, tile_um)  # validates
    return f"{float(tile_um):g}um"
