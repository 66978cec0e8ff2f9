"""Entry point of histobag-gpl: the hooks histobag calls. Imports no torch or timm."""

from __future__ import annotations

from histobag import ExtractorSpec, hookimpl
from histobag_gpl import specs


@hookimpl
def histobag_extractors() -> list[ExtractorSpec]:
    """CTransPath and RetCCL."""
    return specs.specs()
