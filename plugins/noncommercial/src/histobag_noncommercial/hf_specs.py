"""Specs of the non-commercial models published in transformers layouts (Phikon, Phikon-v2, PLIP).

Plain data: listing them imports no torch, timm or transformers.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag_noncommercial import citations_hf

_PACKAGE = "histobag_noncommercial"
OWKIN_LICENSE = "LicenseRef-owkin-non-commercial"

#: OpenAI CLIP's normalisation, used by PLIP's CLIPImageProcessor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def phikon() -> ExtractorSpec:
    """Phikon: iBOT ViT-B/16 (owkin/phikon, transformers ``ViTModel``)."""
    return ExtractorSpec(
        name="phikon",
        factory=f"{_PACKAGE}.phikon:build_phikon",
        license=OWKIN_LICENSE,
        license_url="https://huggingface.co/owkin/phikon",
        citation=citations_hf.PHIKON,
        num_features=768,
        input_size=224,
        # ViTImageProcessor: resize to 224x224 (bilinear), ImageNet mean/std.
        preprocessing=Preprocessing(resize=224, interpolation="bilinear", antialias=True),
        description="Phikon (Owkin): iBOT ViT-B/16 trained on 40M TCGA tiles; class token",
        tags=("foundation", "ssl", "vit"),
        hf_repo="owkin/phikon",
        hf_filename="model.safetensors",
        gated=False,
    )


def phikon_v2() -> ExtractorSpec:
    """Phikon-v2: DINOv2 ViT-L/16 (owkin/phikon-v2, transformers ``Dinov2Model``)."""
    return ExtractorSpec(
        name="phikon-v2",
        factory=f"{_PACKAGE}.phikon:build_phikon_v2",
        license=OWKIN_LICENSE,
        license_url="https://huggingface.co/owkin/phikon-v2",
        citation=citations_hf.PHIKON_V2,
        num_features=1024,
        input_size=224,
        # BitImageProcessor: shortest edge 224 (bicubic), center crop 224, ImageNet mean/std.
        preprocessing=Preprocessing(
            resize=224,
            center_crop=224,
            resize_first=True,
            interpolation="bicubic",
            antialias=True,
        ),
        description=(
            "Phikon-v2 (Owkin): DINOv2 ViT-L/16 trained on 460M tiles of public cohorts; "
            "class token"
        ),
        tags=("foundation", "ssl", "vit"),
        hf_repo="owkin/phikon-v2",
        hf_filename="model.safetensors",
        gated=False,
    )


def plip() -> ExtractorSpec:
    """PLIP: CLIP ViT-B/32 fine-tuned on pathology image-text pairs (vinid/plip)."""
    return ExtractorSpec(
        name="plip",
        factory=f"{_PACKAGE}.plip:build_plip",
        license="NOASSERTION",
        license_url="https://huggingface.co/vinid/plip",
        citation=citations_hf.PLIP,
        num_features=512,
        input_size=224,
        # CLIPImageProcessor: shortest edge 224 (bicubic), center crop 224, OpenAI CLIP norm.
        preprocessing=Preprocessing(
            resize=224,
            center_crop=224,
            resize_first=True,
            interpolation="bicubic",
            antialias=True,
            mean=CLIP_MEAN,
            std=CLIP_STD,
        ),
        description=(
            "PLIP: CLIP ViT-B/32 fine-tuned on pathology image-text pairs from medical Twitter; "
            "projected image embedding, .text_features(texts) (needs transformers). Weights' "
            "licence not stated by the authors"
        ),
        tags=("foundation", "vision-language", "clip"),
        hf_repo="vinid/plip",
        hf_filename="pytorch_model.bin",
        gated=False,
        model_kwargs=("tokenizer",),
    )


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [phikon(), phikon_v2(), plip()]
