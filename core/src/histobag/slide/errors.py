"""Errors specific to tiling settings and regions of interest.

Both derive from :class:`histobag.errors.HistobagError` and from :class:`ValueError`, so code
that catches either keeps working.
"""

from __future__ import annotations

from histobag.errors import ArgumentError, SlideError

__all__ = ["ROIError", "TileSettingsError"]


class TileSettingsError(ArgumentError):
    """Tiling settings are invalid (tile_px, tile_um, stride_div, roi_method, ...).

    An :class:`~histobag.errors.ArgumentError`, so also a ``HistobagError`` and a ``ValueError``.
    """


class ROIError(SlideError, ValueError):
    """A region-of-interest file is missing, malformed or has no usable polygon."""
