"""Entry point of histobag-apache: the hooks histobag calls. Imports no torch or timm."""

from __future__ import annotations

from histobag import ExtractorSpec, hookimpl
from histobag_apache import foundation_specs, imagenet_specs, ssl_specs


@hookimpl
def histobag_extractors() -> list[ExtractorSpec]:
    """ImageNet extractors and the Apache-licensed pathology models."""
    return [*imagenet_specs.listed_specs(), *foundation_specs.specs(), *ssl_specs.specs()]


@hookimpl
def histobag_resolve_extractor(name: str) -> ExtractorSpec | None:
    """Any ``<timm architecture>_imagenet`` name."""
    return imagenet_specs.resolve(name)
