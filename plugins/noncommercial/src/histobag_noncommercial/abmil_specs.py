"""Specs of the Mahmood Lab ABMIL slide encoders MADELEINE and FEATHER (plain data).

Both are CC-BY-NC-ND 4.0 (the official repositories' licences, repeated by TRIDENT) and sit
in gated Hugging Face repositories. Tiles and magnifications are those TRIDENT runs them with
(``--patch_size 256 --mag 10`` for MADELEINE, as its README also says; ``--patch_size 512 --mag
20`` for FEATHER).

THREADS (Vaidya et al., 2025), the third slide encoder of this family in TRIDENT, is left out:
its weights and code are not released (TRIDENT's ``threads`` encoder raises "Coming Soon!").
"""

from __future__ import annotations

from histobag import ExtractorSpec, SlideInput
from histobag.extractors.hub import bibtex_entries
from histobag_noncommercial.timm_specs import CC_BY_NC_ND_URL

_CITATIONS = bibtex_entries("histobag_noncommercial")
_TAGS = ("slide-encoder", "foundation", "abmil")
_NO_COORDS = "ignored (attention pooling over the bag)"
_CALL = "call it as f(features, coords) or .generate_and_save(bags_dir, outdir), not on images"


def madeleine() -> ExtractorSpec:
    """MADELEINE: 512-d CONCH v1 features of 256 px tiles at 10x → 512-d slide embedding."""
    return ExtractorSpec(
        name="madeleine",
        factory="histobag_noncommercial.madeleine:build_madeleine",
        license="CC-BY-NC-ND-4.0",
        license_url=CC_BY_NC_ND_URL,
        citation=_CITATIONS["jaume2024madeleine"],
        num_features=512,
        description=(
            "MADELEINE (Mahmood Lab, ECCV 2024) slide encoder: 4-head gated ABMIL over conch "
            "features of 256 px tiles at 10x -> 512-d slide embedding (encode_he, as TRIDENT); "
            f"{_CALL}; non-commercial, gated: request access on "
            "https://huggingface.co/MahmoodLab/madeleine"
        ),
        tags=_TAGS,
        kind="tile_features",
        slide_input=SlideInput(
            tile_encoders=("conch",), tile_px=256, magnification=10.0, coordinates=_NO_COORDS
        ),
        hf_repo="MahmoodLab/madeleine",
        hf_filename="model.pt",
        gated=True,
        # the official inference autocasts to the training precision (bfloat16)
        autocast_dtype="bfloat16",
    )


def feather() -> ExtractorSpec:
    """FEATHER-24K: 768-d CONCH v1.5 features of 512 px tiles at 20x → 512-d slide embedding."""
    return ExtractorSpec(
        name="feather",
        factory="histobag_noncommercial.feather:build_feather",
        aliases=("feather-conch-v1.5",),
        license="CC-BY-NC-ND-4.0",
        license_url=CC_BY_NC_ND_URL,
        citation=_CITATIONS["shao2025feather"],
        num_features=512,
        description=(
            "FEATHER-24K (Mahmood Lab, ICML 2025) slide encoder: gated ABMIL over conch-v1.5 "
            "features of 512 px tiles at 20x -> 512-d slide embedding (forward_features, as "
            "TRIDENT, which runs it in float32; so does precision='auto'); "
            f"{_CALL}; non-commercial, gated: request access on "
            "https://huggingface.co/MahmoodLab/abmil.base.conch_v15.pc108-24k"
        ),
        tags=_TAGS,
        kind="tile_features",
        slide_input=SlideInput(
            tile_encoders=("conch-v1.5",), tile_px=512, magnification=20.0, coordinates=_NO_COORDS
        ),
        hf_repo="MahmoodLab/abmil.base.conch_v15.pc108-24k",
        hf_filename="model.safetensors",
        gated=True,
        autocast_dtype="float32",  # TRIDENT runs it in float32 only
    )


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [madeleine(), feather()]
