"""Specs of CONCH v1 and CONCH v1.5 (Mahmood Lab; CC-BY-NC-ND-4.0, gated).

Plain data: listing them imports no torch or timm.
"""

from __future__ import annotations

from typing import Any

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import SpecTable, pil_resize_crop
from histobag_noncommercial.hf_specs import CLIP_MEAN, CLIP_STD
from histobag_noncommercial.timm_specs import CC_BY_NC_ND_URL

#: Gated repositories, 448 px input; both model cards state CC-BY-NC-ND 4.0.
TABLE = SpecTable(
    "histobag_noncommercial",
    "CC-BY-NC-ND-4.0",
    CC_BY_NC_ND_URL,
    tags=("foundation", "pathology", "vit"),
    gated=True,
    input_size=448,
)

# The official transforms, on PIL images. CONCH v1 (open_clip_custom.image_transform): resize
# 448 bicubic, crop 448, OpenAI CLIP mean/std. CONCH v1.5 (create_model_from_pretrained of
# conchv1_5): resize 448 bilinear, crop 448, ImageNet mean/std.
_CONCH_PRE = pil_resize_crop(448, 448, interpolation="bicubic", mean=CLIP_MEAN, std=CLIP_STD)
_CONCH_V1_5_PRE = pil_resize_crop(448, 448, interpolation="bilinear")

#: name: (factory module, Hub repository, BibTeX key, num_features, preprocessing).
MODELS: dict[str, tuple[str, str, str, int, Preprocessing]] = {
    "conch": ("conch", "MahmoodLab/CONCH", "lu2024conch", 512, _CONCH_PRE),
    "conch-v1.5": ("conch", "MahmoodLab/conchv1_5", "ding2024titan", 768, _CONCH_V1_5_PRE),
}

_ABOUT = {
    "conch": (
        "CONCH (Mahmood Lab): CoCa ViT-B/16 image-text model, 448 px; attention-pooled image "
        "embedding as encode_image(proj_contrast=False, normalize=False) (proj_contrast=, "
        "normalize= for the joint space), .text_features(texts) (needs CONCH's tokenizer); "
        "non-commercial"
    ),
    "conch-v1.5": (
        "CONCH v1.5 (Mahmood Lab, TITAN's patch encoder): ViT-L/16, 448 px; attention-pooled "
        "embedding; non-commercial"
    ),
}

#: Fields beyond the table's. CONCH's checkpoint may nest its weights under 'state_dict'.
_OWN: dict[str, dict[str, Any]] = {
    "conch": {
        "aliases": ("conch-v1", "conch_v1"),
        "tags": ("foundation", "pathology", "vit", "vision-language"),
        "checkpoint_keys": ("state_dict",),
        "model_kwargs": ("proj_contrast", "normalize", "tokenizer"),
    },
    "conch-v1.5": {
        "aliases": ("conch-v15", "conch_v15", "conchv1_5"),
        "hf_filename": "pytorch_model_vision.bin",
    },
}


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [
        TABLE.spec(name, *row, description=_ABOUT[name], **_OWN.get(name, {}))
        for name, row in MODELS.items()
    ]
