"""Specs of the non-commercial models published in transformers layouts (Phikon, Phikon-v2, PLIP).

Plain data: listing them imports no torch, timm or transformers.
"""

from __future__ import annotations

from typing import Any

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import SpecTable, pil_resize_crop

OWKIN_LICENSE = "LicenseRef-owkin-non-commercial"
_TAGS = ("foundation", "ssl", "vit")

#: Open ``model.safetensors`` files on the Hub, 224 px input; each model page states the terms.
TABLE = SpecTable("histobag_noncommercial", OWKIN_LICENSE, tags=_TAGS, filename="model.safetensors")

#: OpenAI CLIP's normalisation, used by PLIP's CLIPImageProcessor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The image processors of the published preprocessor_config.json files, on the device.
# ViTImageProcessor: resize to 224x224 (bilinear), ImageNet mean/std.
_PHIKON_PRE = Preprocessing(resize=224, interpolation="bilinear", antialias=True)
# BitImageProcessor: shortest edge 224 (bicubic), center crop 224, ImageNet mean/std.
_PHIKON_V2_PRE = pil_resize_crop(224, 224, interpolation="bicubic")
# CLIPImageProcessor: shortest edge 224 (bicubic), center crop 224, OpenAI CLIP norm.
_PLIP_PRE = pil_resize_crop(224, 224, interpolation="bicubic", mean=CLIP_MEAN, std=CLIP_STD)

#: name: (factory module, Hub repository, BibTeX key, num_features, preprocessing).
MODELS: dict[str, tuple[str, str, str, int, Preprocessing]] = {
    "phikon": ("phikon", "owkin/phikon", "filiot2023scaling", 768, _PHIKON_PRE),
    "phikon-v2": ("phikon", "owkin/phikon-v2", "filiot2024phikonv2", 1024, _PHIKON_V2_PRE),
    "plip": ("plip", "vinid/plip", "huang2023visual", 512, _PLIP_PRE),
}

_ABOUT = {
    "phikon": "Phikon (Owkin): iBOT ViT-B/16 trained on 40M TCGA tiles; class token",
    "phikon-v2": (
        "Phikon-v2 (Owkin): DINOv2 ViT-L/16 trained on 460M tiles of public cohorts; class token"
    ),
    "plip": (
        "PLIP: CLIP ViT-B/32 fine-tuned on pathology image-text pairs from medical Twitter; "
        "projected image embedding, .text_features(texts) (needs transformers). Weights' "
        "licence not stated by the authors"
    ),
}

#: Fields beyond the table's: PLIP is published as a PyTorch file with no stated licence.
_OWN: dict[str, dict[str, Any]] = {
    "plip": {
        "license": "NOASSERTION",
        "hf_filename": "pytorch_model.bin",
        "tags": ("foundation", "vision-language", "clip"),
        "model_kwargs": ("tokenizer",),
    },
}


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [
        TABLE.spec(name, *row, description=_ABOUT[name], **_OWN.get(name, {}))
        for name, row in MODELS.items()
    ]
