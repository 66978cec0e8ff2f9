"""Argument checks at the API boundary: each says what was given and what is allowed.

Every public entry point (``generate_feature_bags``, ``Dataset``, ``WSI``, ``Project``, the
engine, the command line) checks its arguments here before any slide is opened or any model is
built, so a bad value fails at once with a :class:`~histobag.errors.ArgumentError` instead of a
``ZeroDivisionError`` deep in the engine or a run that blames every slide.

Bounds, and why:

- ``batch_size``: an integer >= 1 (tiles per model call). No upper bound: memory is the
  caller's choice, and bounded by it.
- ``num_workers``: ``"auto"`` or an integer from 0 to :data:`MAX_WORKERS` (1024); a numeric
  string such as ``"4"`` is read as 4 (the command line). More processes is a typo, not a
  setting.
- ``tile_px``: an integer from :data:`MIN_TILE_PX` (8) to :data:`MAX_TILE_PX` (16384). A tile is
  read as ``tile_px² × 3`` bytes: 768 MiB at 16384 px; JPEG tiles in TFRecords cannot exceed
  65535 px.
- ``tile_um``: micrometres in (0, :data:`MAX_TILE_UM`] (100 mm, wider than any glass slide:
  75 × 25 mm, 75 × 50 mm for large formats), or a magnification such as ``"20x"``.
- ``mpp``: microns per pixel within :data:`MPP_RANGE` (0.01 to 100): optics resolve about
  0.2 µm, and 352.8 is a TIFF's 72-dpi default, not a scan.
- ``min_tiles``, ``max_tiles``: integers >= 0.
- ``outdir``: a writable folder, or a path one can be created at (not a file, not under one).

Layer 0: imports nothing from histobag but :mod:`histobag.errors`.
"""

from __future__ import annotations

import errno
import math
import numbers
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from histobag.errors import ArgumentError, HistobagError, StorageError

__all__ = [
    "MAX_TILE_PX",
    "MAX_TILE_UM",
    "MAX_WORKERS",
    "MIN_TILE_PX",
    "MPP_RANGE",
    "check_batch_size",
    "check_choice",
    "check_fraction",
    "check_mpp",
    "check_num_workers",
    "check_output_dir",
    "check_slide_folder",
    "check_tile_px",
    "check_tile_size",
    "check_tile_um",
    "non_negative_int",
    "positive_int",
]

#: Smallest and largest tile side in pixels.
MIN_TILE_PX = 8
MAX_TILE_PX = 16384
#: Largest tile side in micrometres (100 mm: wider than any glass slide).
MAX_TILE_UM = 100_000.0
#: Most tile-reading processes.
MAX_WORKERS = 1024
#: Plausible level-0 microns per pixel, given or recorded.
MPP_RANGE = (0.01, 100.0)

_MAGNIFICATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[xX]\s*$")

ErrorType = type[HistobagError]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(
    name: str,
    value: Any,
    *,
    maximum: int | None = None,
    error: ErrorType = ArgumentError,
) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 1 (and <= ``maximum``).

    Args:
        name: The argument's name as the caller wrote it (``"batch_size"``, ``"--batch-size"``).
        value: The value given.
        maximum: Largest allowed value, if any.
        error: Exception class to raise (a :class:`~histobag.errors.HistobagError`).

    Raises:
        ArgumentError: ``value`` is not an integer in range (or ``error`` if given).
    """
    allowed = "an integer >= 1" if maximum is None else f"an integer from 1 to {maximum}"
    if not _is_int(value) or value < 1 or (maximum is not None and value > maximum):
        raise error(f"{name} must be {allowed}, got {value!r}.")
    return int(value)


def non_negative_int(name: str, value: Any, *, error: ErrorType = ArgumentError) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 0.

    Raises:
        ArgumentError: ``value`` is not a non-negative integer (or ``error`` if given).
    """
    if not _is_int(value) or value < 0:
        raise error(f"{name} must be an integer >= 0, got {value!r}.")
    return int(value)


def check_choice(
    name: str, value: Any, choices: Iterable[str], *, error: ErrorType = ArgumentError
) -> str:
    """Return ``value`` if it is one of ``choices``.

    Raises:
        ArgumentError: It is not (or ``error`` if given).
    """
    options = list(choices)
    if not isinstance(value, str) or value not in options:
        listed = ", ".join(repr(c) for c in options)
        raise error(f"{name} must be one of {listed}, got {value!r}.")
    return value


def check_batch_size(value: Any, *, name: str = "batch_size") -> int:
    """Tiles per model call: an integer >= 1.

    Raises:
        ArgumentError: Anything else (``0``, ``-4``, ``"32"``, ``32.0``).
    """
    return positive_int(name, value)


def check_num_workers(value: Any, *, name: str = "num_workers") -> int | Literal["auto"]:
    """Tile-reading processes: ``"auto"`` or an integer from 0 to :data:`MAX_WORKERS`.

    A string of digits (as the command line passes it) is read as that integer.

    Raises:
        ArgumentError: Anything else (``-3``, ``"many"``, ``2.5``).
    """
    if isinstance(value, str):
        text = value.strip()
        if text == "auto":
            return "auto"
        if text.isdigit():
            value = int(text)
    if not _is_int(value) or not 0 <= value <= MAX_WORKERS:
        raise ArgumentError(
            f"{name} must be 'auto' or an integer from 0 to {MAX_WORKERS} (0 reads tiles in "
            f"the main process), got {value!r}."
        )
    return int(value)


def check_tile_px(value: Any, *, name: str = "tile_px", error: ErrorType = ArgumentError) -> int:
    """Tile side in pixels: an integer from :data:`MIN_TILE_PX` to :data:`MAX_TILE_PX`.

    Raises:
        ArgumentError: Anything else (or ``error`` if given).
    """
    if not _is_int(value) or not MIN_TILE_PX <= value <= MAX_TILE_PX:
        raise error(
            f"{name} must be an integer from {MIN_TILE_PX} to {MAX_TILE_PX} pixels, got {value!r}."
        )
    return int(value)


def check_tile_um(
    value: Any, *, name: str = "tile_um", error: ErrorType = ArgumentError
) -> float | str:
    """Tile side: micrometres in (0, :data:`MAX_TILE_UM`], or a magnification such as ``"20x"``.

    A numeric string (``"128"``, as the command line passes it) is read as micrometres; a
    magnification string is returned as it is.

    Returns:
        The micrometres as a ``float`` (an ``int`` stays an ``int``), or the magnification
        string.

    Raises:
        ArgumentError: Anything else (or ``error`` if given).
    """
    allowed = (
        f"a positive number of micrometres (at most {MAX_TILE_UM:g}) or a magnification such "
        "as '20x'"
    )
    if isinstance(value, str):
        match = _MAGNIFICATION.match(value)
        if match:
            if float(match.group(1)) > 0:
                return value
            raise error(f"{name}: a magnification must be above 0x, got {value!r}.")
        try:
            number = float(value)
        except ValueError:
            raise error(f"{name} must be {allowed}, got {value!r}.") from None
        return check_tile_um(number, name=name, error=error)
    if not _is_real(value) or not math.isfinite(value) or not 0 < value <= MAX_TILE_UM:
        raise error(f"{name} must be {allowed}, got {value!r}.")
    return value


def check_tile_size(
    tile_px: Any,
    tile_um: Any,
    *,
    names: tuple[str, str] = ("tile_px", "tile_um"),
    error: ErrorType = ArgumentError,
) -> tuple[int, float | str]:
    """Check ``tile_px`` and ``tile_um`` together (a magnification also bounds the microns).

    Args:
        tile_px: Tile side in pixels.
        tile_um: Tile side in micrometres, or a magnification such as ``"20x"``.
        names: The two arguments' names, for messages (``("--tile-px", "--tile-um")``).
        error: Exception class to raise.

    Returns:
        ``(tile_px, tile_um)`` as :func:`check_tile_px` and :func:`check_tile_um` return them.

    Raises:
        ArgumentError: Either is out of range, or ``tile_px`` pixels at the magnification span
            more than :data:`MAX_TILE_UM` (or ``error`` if given).
    """
    px = check_tile_px(tile_px, name=names[0], error=error)
    um = check_tile_um(tile_um, name=names[1], error=error)
    if isinstance(um, str):
        match = _MAGNIFICATION.match(um)
        assert match is not None
        microns = px * 10.0 / float(match.group(1))
        if microns > MAX_TILE_UM:
            raise error(
                f"{px} px at {um} spans {microns:,.0f} µm, more than {MAX_TILE_UM:,.0f} µm; use a "
                "higher magnification or fewer pixels."
            )
    return px, um


def check_mpp(value: Any, *, name: str = "mpp", error: ErrorType = ArgumentError) -> float:
    """Microns per level-0 pixel: a number in :data:`MPP_RANGE`.

    Raises:
        ArgumentError: Anything else (or ``error`` if given).
    """
    low, high = MPP_RANGE
    if not _is_real(value) or not low <= value <= high:
        raise error(
            f"{name} must be a positive number of microns per pixel from {low:g} to {high:g} "
            f"(0.25 at 40x, 0.5 at 20x), got {value!r}."
        )
    return float(value)


def check_fraction(name: str, value: Any, *, error: ErrorType = ArgumentError) -> float:
    """A fraction: a number from 0 to 1.

    Raises:
        ArgumentError: Anything else (or ``error`` if given).
    """
    if not _is_real(value) or not 0 <= value <= 1:
        raise error(f"{name} must be a number from 0 to 1, got {value!r}.")
    return float(value)


def check_slide_folder(
    value: str | os.PathLike[str], *, name: str = "slides", error: ErrorType = ArgumentError
) -> Path:
    """A folder of slides that exists (it is searched recursively).

    Raises:
        ArgumentError: ``value`` is a file or does not exist (or ``error`` if given).
    """
    folder = Path(value)
    if folder.is_file():
        raise error(
            f"{name} {folder} is a file; give a folder of slides (it is searched recursively), "
            "or a list of slide paths."
        )
    if not folder.is_dir():
        raise error(f"{name} {folder} does not exist; give a folder of slides.")
    return folder


def check_output_dir(value: Any, *, name: str = "outdir") -> Path:
    """An output folder: an existing writable folder, or a path one can be created at.

    Nothing is created. When the folder does not exist yet, its nearest existing parent must
    be a writable folder.

    Args:
        value: The path given.
        name: The argument's name, for messages (``"outdir"``, ``"--outdir"``).

    Returns:
        The path.

    Raises:
        ArgumentError: It is not a path, it is a file, or it lies under a file.
        StorageError: It (or the parent it would be created in) is on a read-only file system
            or not writable by this user.
    """
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise ArgumentError(f"{name} must be a folder path, got {value!r}.")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ArgumentError(
            f"{name} {path} is a file, not a folder; give a folder path (it is created if missing)."
        )
    if path.is_symlink() and not path.exists():
        raise ArgumentError(f"{name} {path} is a broken link; remove it or give another folder.")
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ArgumentError(
            f"{name} {path} lies under {existing}, which is a file; give a folder path."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = _read_only_mount(existing)
        reason = "is on a read-only file system" if read_only else "is not writable by this user"
        where = "" if existing == path.absolute() else f" (it would be created in {existing})"
        raise StorageError(
            f"{name} {path}{where}: {existing} {reason}; choose a folder you can write to.",
            errno_=errno.EROFS if read_only else errno.EACCES,
            folder=str(existing),
        )
    return path


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False
