"""Entry point of histobag-apache: the hooks histobag calls. Imports no torch or timm."""

from __future__ import annotations

from histobag import ExtractorSpec, hookimpl
from histobag_apache import (
    foundation_specs,
    hibou_specs,
    imagenet_specs,
    keep_specs,
    midnight_specs,
    ssl_specs,
)


@hookimpl
def histobag_extractors() -> list[ExtractorSpec]:
    """ImageNet extractors and the permissively licensed pathology models (Virchow,
    H-optimus-0, DINOv2, SimCLR, KEEP, Hibou-B/L, Midnight-12k)."""
    return [
        *imagenet_specs.listed_specs(),
        *foundation_specs.specs(),
        *ssl_specs.specs(),
        *keep_specs.specs(),
        *hibou_specs.specs(),
        *midnight_specs.specs(),
    ]


@hookimpl
def histobag_resolve_extractor(name: str) -> ExtractorSpec | None:
    """Any ``<timm architecture>_imagenet`` name."""
    return imagenet_specs.resolve(name)
