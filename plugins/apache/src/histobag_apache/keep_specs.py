"""Spec of KEEP (MAGIC-AI4Med), whose weights the model card publishes under the MIT licence.

Plain data: listing it imports no torch or timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec
from histobag.extractors.hub import SpecTable, pil_resize_crop

REPO = "Astaxanthin/KEEP"

#: The open ``model.safetensors`` of the Hub repository; the card states "License: MIT".
TABLE = SpecTable(
    "histobag_apache",
    "MIT",
    f"https://huggingface.co/{REPO}",
    tags=("foundation", "pathology", "vision-language", "vit"),
    filename="model.safetensors",
)

#: The card's transform: Resize(224, bicubic), CenterCrop(224), ImageNet mean/std, on PIL.
PREPROCESSING = pil_resize_crop(224, 224, interpolation="bicubic")

ABOUT = (
    "KEEP (MAGIC-AI4Med): knowledge-enhanced pathology CLIP, image branch ViT-L/16; "
    "L2-normalised 768-d projection of the class token (encode_image); .text_features(texts) "
    "(needs transformers)"
)


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [
        TABLE.spec(
            "keep",
            "keep",
            REPO,
            "zhou2026keep",
            768,
            PREPROCESSING,
            description=ABOUT,
            model_kwargs=("tokenizer",),
        )
    ]
