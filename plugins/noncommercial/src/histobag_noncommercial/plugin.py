"""Entry point of histobag-noncommercial: the hooks histobag calls. Imports no torch or timm."""

from __future__ import annotations

from histobag import ExtractorSpec, hookimpl
from histobag.specs import TissueDetectorSpec
from histobag_noncommercial import (
    abmil_specs,
    bioptimus_specs,
    chief_specs,
    conch_specs,
    genbio_specs,
    gigapath_specs,
    gpfm_specs,
    hf_specs,
    kaiko_specs,
    lunit_specs,
    musk_specs,
    prism_specs,
    timm_specs,
    tissue_specs,
    titan_specs,
)


@hookimpl
def histobag_extractors() -> list[ExtractorSpec]:
    """UNI, UNI2-h, Virchow2, GigaPath, Phikon, Phikon-v2, PLIP, Kaiko, Lunit, MUSK, GPFM,
    GenBio-PathFM, CONCH v1/v1.5, H-optimus-1 and H0-mini."""
    return [
        *timm_specs.specs(),
        *hf_specs.specs(),
        *gigapath_specs.specs(),
        *kaiko_specs.specs(),
        *lunit_specs.specs(),
        *musk_specs.specs(),
        *gpfm_specs.specs(),
        *genbio_specs.specs(),
        *conch_specs.specs(),
        *bioptimus_specs.specs(),
        *abmil_specs.specs(),
        *chief_specs.specs(),
        *prism_specs.specs(),
        *titan_specs.specs(),
    ]


@hookimpl
def histobag_tissue_detectors() -> list[TissueDetectorSpec]:
    """``grandqc``: GrandQC's tissue segmentation network (weights CC BY-NC-SA 4.0)."""
    return tissue_specs.specs()
