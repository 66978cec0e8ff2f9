"""Specs of the Apache-2.0 pathology foundation models (Virchow, H-optimus-0)."""

from __future__ import annotations

from histobag import ExtractorSpec


def specs() -> list[ExtractorSpec]:
    """The foundation models of this pack."""
    return []
