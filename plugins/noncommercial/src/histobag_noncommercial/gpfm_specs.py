"""Spec of GPFM (HKUST SmartLab), whose code and weights are released under CC-BY-NC-ND-4.0.

Plain data: listing it imports no torch or timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import SpecTable

#: The LICENSE of the official repository, which publishes the weights (GitHub release and
#: the Hugging Face repository it links).
LICENSE_URL = "https://github.com/birkhoffkiki/GPFM/blob/main/LICENSE"

TABLE = SpecTable(
    "histobag_noncommercial",
    "CC-BY-NC-ND-4.0",
    LICENSE_URL,
    tags=("foundation", "pathology", "vit"),
    filename="GPFM.pth",
)

#: The official ``build_transform``: Resize((224, 224), bicubic) on PIL, ImageNet mean/std.
PREPROCESSING = Preprocessing(resize=224, interpolation="bicubic", antialias=True)

ABOUT = (
    "GPFM (HKUST): DINOv2 ViT-L/14 pretrained by unified knowledge distillation; CLS; "
    "the authors prefer 512 px tiles at 40x, resized to 224"
)


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [
        TABLE.spec(
            "gpfm",
            "gpfm",
            "majiabo/GPFM",
            "ma2025gpfm",
            1024,
            PREPROCESSING,
            description=ABOUT,
            checkpoint_keys=("state_dict",),
        )
    ]
