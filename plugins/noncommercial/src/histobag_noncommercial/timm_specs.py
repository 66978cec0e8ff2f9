"""Specs of non-commercial models (filled in by later work)."""

from __future__ import annotations

from histobag import ExtractorSpec


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return []
