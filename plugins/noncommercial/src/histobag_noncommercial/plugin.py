"""Entry point of histobag-noncommercial: the hooks histobag calls. Imports no torch or timm."""

from __future__ import annotations

from histobag import ExtractorSpec, hookimpl
from histobag_noncommercial import gigapath_specs, hf_specs, timm_specs


@hookimpl
def histobag_extractors() -> list[ExtractorSpec]:
    """UNI, UNI2-h, Virchow2, GigaPath, Phikon, Phikon-v2 and PLIP."""
    return [*timm_specs.specs(), *hf_specs.specs(), *gigapath_specs.specs()]
