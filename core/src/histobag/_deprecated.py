"""Warnings for module paths renamed in histobag 0.3 (kept importable until 0.4)."""

from __future__ import annotations

import warnings

__all__ = ["warn_moved"]


def warn_moved(old: str, new: str) -> None:
    """Warn, at the importer's line, that module ``old`` is now ``new``."""
    warnings.warn(
        f"{old} was renamed to {new} in histobag 0.3; the old name will be removed in 0.4. "
        f"Import from {new} instead.",
        DeprecationWarning,
        stacklevel=3,
    )
