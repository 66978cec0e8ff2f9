"""Spec of TITAN (Mahmood Lab; CC-BY-NC-ND-4.0, gated). Plain data: no torch."""

from __future__ import annotations

from histobag import ExtractorSpec, SlideInput
from histobag.extractors.hub import bibtex_entries
from histobag_noncommercial.timm_specs import CC_BY_NC_ND_URL

REPO = "MahmoodLab/TITAN"
#: The TITAN README (https://github.com/mahmoodlab/TITAN, "License and Terms of use") releases
#: the model and its code under CC-BY-NC-ND 4.0.
LICENSE = "CC-BY-NC-ND-4.0"

#: CONCH v1.5 features of 512 px tiles at 20x (0.5 µm/px), as the README and TRIDENT make
#: them; coordinates are level-0 top-left corners, ``extent_px`` the level-0 tile side.
SLIDE_INPUT = SlideInput(
    tile_encoders=("conch-v1.5",),
    tile_px=512,
    magnification=20.0,
    coordinates=(
        "floor((xy - min xy) / extent_px) -> cells of a 2-D grid (tiles in one cell summed, "
        "all-zero cells dropped); 2-D ALiBi on the cells' Euclidean distances"
    ),
)


def titan() -> ExtractorSpec:
    """TITAN: CONCH v1.5 tile features + coordinates → 768-d slide embedding; text tower."""
    return ExtractorSpec(
        name="titan",
        factory="histobag_noncommercial.titan:build_titan",
        aliases=("titan-preview",),
        license=LICENSE,
        license_url=CC_BY_NC_ND_URL,
        citation=bibtex_entries("histobag_noncommercial")["ding2024titan"],
        num_features=768,
        description=(
            "TITAN slide encoder (Mahmood Lab; ViT with 2-D ALiBi over the grid of 768-d "
            "conch-v1.5 features of 512 px tiles at 20x) -> 768-d slide embedding, as "
            "encode_slide_from_patch_features(); zero-shot: .text_features(prompts) "
            "(TITAN's tokenizer.json, transformers), .slide_to_text_space(), .logit_scale; "
            "text=False loads the slide encoder only; non-commercial; gated: request access "
            f"on https://huggingface.co/{REPO}"
        ),
        tags=("slide-encoder", "foundation", "pathology", "vision-language"),
        kind="tile_features",
        slide_input=SLIDE_INPUT,
        hf_repo=REPO,
        hf_filename="model.safetensors",
        gated=True,
        autocast_dtype="float16",  # the README and TRIDENT run it under fp16 autocast
        model_kwargs=("text", "tokenizer"),
    )


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [titan()]
