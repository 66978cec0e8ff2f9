"""Specs of Prov-GigaPath's slide encoder and of the tile + slide pipeline (plain data)."""

from __future__ import annotations

from histobag import ExtractorSpec, SlideInput
from histobag.extractors.hub import bibtex_entries

_REPO = "prov-gigapath/prov-gigapath"
_MODULE = "histobag_noncommercial.gigapath_slide"
CITATION = bibtex_entries("histobag_noncommercial")["xu2024gigapath"]
#: The code is Apache-2.0, but the model card restricts the weights to research use (no
#: commercial or clinical use) and the repository is gated; no SPDX identifier says that.
LICENSE = "LicenseRef-prov-gigapath"
_TERMS = (
    "research use only, see the model card's terms; gated: request access on "
    f"https://huggingface.co/{_REPO}"
)


def gigapath_slide() -> ExtractorSpec:
    """Prov-GigaPath's LongNet slide encoder: tile features + coordinates → 768-d."""
    return ExtractorSpec(
        name="gigapath.slide",
        factory=f"{_MODULE}:build_gigapath_slide",
        aliases=("gigapath-slide",),
        license=LICENSE,
        license_url=f"https://huggingface.co/{_REPO}",
        citation=CITATION,
        num_features=768,
        description=(
            "Prov-GigaPath slide encoder (LongNet ViT, 12 layers): 1536-d gigapath.tile "
            "features + tile coordinates -> 768-d slide embedding (CLS of the last layer, as "
            "the official pipeline); call it as f(features, coords) or "
            f".generate_and_save(bags_dir, outdir), not on images; {_TERMS}"
        ),
        tags=("slide-encoder", "foundation"),
        kind="tile_features",
        # Trained on 256 px tiles at 0.5 µm/px (20x), the tile encoder's input.
        slide_input=SlideInput(
            ("gigapath.tile",),
            tile_px=256,
            magnification=20.0,
            coordinates="tile cell = round(top-left / grid pitch) on a 1000 x 1000 grid",
        ),
        hf_repo=_REPO,
        hf_filename="slide_encoder.pth",
        gated=True,
        checkpoint_keys=("model",),
        autocast_dtype="float16",  # the official pipeline runs under fp16 autocast
        model_kwargs=("layer", "pooling"),
    )


def gigapath() -> ExtractorSpec:
    """Prov-GigaPath end to end: tile encoder, then slide encoder, on a WSI."""
    return ExtractorSpec(
        name="gigapath",
        factory=f"{_MODULE}:build_gigapath",
        license=LICENSE,
        license_url=f"https://huggingface.co/{_REPO}",
        citation=CITATION,
        num_features=768,
        description=(
            "Prov-GigaPath tile + slide encoders: extractor(wsi) -> 768-d slide embedding; "
            ".tile and .slide are the two stages; weights via tile_encoder_weights= and "
            f"slide_encoder_weights= (default: download); {_TERMS}"
        ),
        tags=("slide-encoder", "foundation"),
        gated=True,  # both stages download from the gated prov-gigapath repository
        weights_required=False,
        model_kwargs=(
            "tile_encoder_weights",
            "slide_encoder_weights",
            "layer",
            "pooling",
            "tile_encoder",
            "slide_encoder",
        ),
    )


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [gigapath_slide(), gigapath()]
