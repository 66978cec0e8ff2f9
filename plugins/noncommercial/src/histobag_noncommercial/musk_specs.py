"""Spec of MUSK (Stanford, Li lab): a BEiT-3 vision-language model, images and text.

Plain data: listing it imports no torch.
"""

from __future__ import annotations

from histobag import ExtractorSpec
from histobag.extractors.hub import SpecTable, pil_resize_crop

REPO = "xiangjx/musk"
#: Where the authors state the licence (README "License": CC-BY-NC-ND 4.0, weights and code).
LICENSE_URL = "https://github.com/lilab-stanford/MUSK#license"

#: timm's IMAGENET_INCEPTION_MEAN / _STD, which the model card normalises with.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

#: Gated ``model.safetensors`` on the Hub (access is requested on the model page).
TABLE = SpecTable(
    "histobag_noncommercial",
    "CC-BY-NC-ND-4.0",
    LICENSE_URL,
    tags=("foundation", "pathology", "vision-language", "beit3"),
    gated=True,
    filename="model.safetensors",
    input_size=384,
)

#: The card's transform: Resize(384, bicubic, antialias), CenterCrop(384), inception mean/std.
PREPROCESSING = pil_resize_crop(
    384, 384, interpolation="bicubic", mean=INCEPTION_MEAN, std=INCEPTION_STD
)

ABOUT = (
    "MUSK (Stanford): BEiT-3 ViT-L/16 vision-language model, image branch at 384 px; class "
    "token ‖ mean class token of the 2x quarters (ms_aug, 2048); multiscale=False: class token "
    "(1024); projection=True: vision_head projection (1024); .text_features with the official "
    "tokenizer.spm (extra: text)"
)


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [
        TABLE.spec(
            "musk",
            "musk",
            REPO,
            "xiang2025musk",
            2048,
            PREPROCESSING,
            description=ABOUT,
            model_kwargs=("multiscale", "projection", "tokenizer"),
        )
    ]
