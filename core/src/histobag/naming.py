"""Slide-name sanitising: turn any slide name into a portable, safe file name stem.

Slide names come from file names and annotation files written by other people. Before a name
becomes part of an output path it goes through :func:`safe_name`, so that a name can never
escape its folder (``../``), hide a file (leading dot), collide with a Windows device name, or
exceed file-system limits.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = ["MAX_NAME_LENGTH", "safe_name"]

#: Longest stem :func:`safe_name` returns; leaves room for suffixes such as ``.index.npz``.
MAX_NAME_LENGTH = 128

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}


def _digest(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def safe_name(name: str) -> str:
    """Return a file-name stem made only of ASCII letters, digits, ``.``, ``_`` and ``-``.

    Every run of other characters (spaces, path separators, accents that do not decompose to
    ASCII, control characters) becomes one ``_``; leading dots and trailing dots are removed;
    Windows device names get a ``_`` prefix; names longer than :data:`MAX_NAME_LENGTH` are cut
    and end with a short hash of the original, so distinct long names stay distinct. A name with
    nothing usable becomes ``unnamed_<hash>``. The function is idempotent:
    ``safe_name(safe_name(s)) == safe_name(s)``.

    Different names can map to the same result (``"a b"`` and ``"a_b"``); callers that turn
    many names into files should check for such collisions.

    Args:
        name: Any string, typically a slide name (file stem).

    Returns:
        The sanitised stem.

    Example:
        >>> safe_name("TCGA AA/3514 (1).svs")
        'TCGA_AA_3514_1_.svs'
    """
    # NFKD splits accented letters into base letter + mark, so 'é' keeps its 'e'.
    ascii_name = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
    cleaned = _UNSAFE.sub("_", ascii_name).strip(".")
    if not cleaned.strip("_"):
        return f"unnamed_{_digest(name)}"
    if cleaned.split(".")[0].upper() in _WINDOWS_RESERVED:
        cleaned = "_" + cleaned
    if len(cleaned) > MAX_NAME_LENGTH:
        cleaned = cleaned[: MAX_NAME_LENGTH - 9].rstrip(".") + "_" + _digest(name)
    return cleaned
