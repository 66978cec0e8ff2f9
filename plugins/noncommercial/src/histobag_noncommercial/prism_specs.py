"""Spec of PRISM's slide encoder (Paige; CC-BY-NC-ND-4.0, gated). Plain data: no torch."""

from __future__ import annotations

from histobag import ExtractorSpec, SlideInput
from histobag.extractors.hub import bibtex_entries
from histobag_noncommercial.timm_specs import CC_BY_NC_ND_URL

REPO = "paige-ai/Prism"
#: The model card states CC-BY-NC-ND 4.0 for the model and its code.
LICENSE = "CC-BY-NC-ND-4.0"

#: Virchow (v1) features (class token ‖ mean patch token) of 224 px tiles at 20x (0.5 µm/px),
#: as the model card and TRIDENT's PRISM pipeline make them.
SLIDE_INPUT = SlideInput(
    tile_encoders=("virchow",),
    tile_px=224,
    magnification=20.0,
    coordinates="ignored (the Perceiver attends to the set of tile features)",
)


def prism() -> ExtractorSpec:
    """PRISM: Virchow tile features → 1280-d slide embedding (Perceiver); zero-shot text side."""
    return ExtractorSpec(
        name="prism",
        factory="histobag_noncommercial.prism:build_prism",
        license=LICENSE,
        license_url=CC_BY_NC_ND_URL,
        citation=bibtex_entries("histobag_noncommercial")["shaikovski2024prism"],
        num_features=1280,
        description=(
            "PRISM slide encoder (Paige; Perceiver over 2560-d virchow features of 224 px "
            "tiles at 20x) -> 1280-d slide embedding, as slide_representations()"
            "['image_embedding']; zero-shot: .text_features(prompts) (BioGPT tokenizer: "
            "transformers + sacremoses), .slide_to_text_space(), .logit_scale, "
            ".class_probabilities(); text=False loads the slide encoder only; non-commercial; "
            f"gated: request access on https://huggingface.co/{REPO}"
        ),
        tags=("slide-encoder", "foundation", "pathology", "vision-language"),
        kind="tile_features",
        slide_input=SLIDE_INPUT,
        hf_repo=REPO,
        hf_filename="model.safetensors",
        gated=True,
        autocast_dtype="float16",  # the model card runs it under fp16 autocast
        model_kwargs=("text", "tokenizer"),
    )


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [prism()]
