"""The tissue detectors of histobag-noncommercial. Plain data: importing this imports no torch."""

from __future__ import annotations

from histobag.specs import TissueDetectorSpec

#: Hugging Face repository and file of GrandQC's tissue-detection weights (CC BY-NC-SA 4.0;
#: first published on Zenodo, record 14507273; this copy is the one TRIDENT loads).
GRANDQC_REPO = "MahmoodLab/hest-tissue-seg"
GRANDQC_FILENAME = "Tissue_Detection_MPP10.pth"


def specs() -> list[TissueDetectorSpec]:
    """``grandqc``: GrandQC's tissue segmentation network."""
    return [
        TissueDetectorSpec(
            "grandqc",
            "histobag_noncommercial.grandqc_tissue:build_grandqc",
            description="GrandQC's tissue segmentation network (UNet++, EfficientNet-B0, at "
            f"10 µm/px); weights CC BY-NC-SA 4.0 from huggingface.co/{GRANDQC_REPO}; needs "
            'pip install "histobag-noncommercial[grandqc]"',
        )
    ]
