"""Deprecated alias of :mod:`histobag.slide.samples` (renamed in 0.3, removed in 0.4)."""

from histobag._deprecated import warn_moved
from histobag.slide.samples import sample_slide

__all__ = ["sample_slide"]

warn_moved("histobag.data", "histobag.slide.samples")
