"""Specs of the Apache-2.0 pathology foundation models (Virchow, H-optimus-0).

Plain data: the factories are ``"module:attr"`` strings, so listing imports no torch or timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag_apache import foundation_citations

_APACHE_URL = "https://www.apache.org/licenses/LICENSE-2.0"
_TAGS = ("foundation", "pathology", "vit")

#: H-optimus-0's normalisation, computed by Bioptimus on its training tiles.
H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)


def _gated(repo: str) -> str:
    return f"weights gated: request access on https://huggingface.co/{repo} first"


def virchow() -> ExtractorSpec:
    """Virchow (Paige): ViT-H/14, class token ‖ mean of the patch tokens."""
    repo = "paige-ai/Virchow"
    return ExtractorSpec(
        name="virchow",
        factory="histobag_apache.virchow:build_virchow",
        license="Apache-2.0",
        license_url=_APACHE_URL,
        citation=foundation_citations.VIRCHOW,
        num_features=2560,
        input_size=224,
        # timm's eval transform of the published config (crop_pct 1.0) on PIL images, whose
        # resampling always antialiases.
        preprocessing=Preprocessing(
            resize=224,
            center_crop=224,
            resize_first=True,
            interpolation="bicubic",
            antialias=True,
        ),
        description=(
            f"Virchow ViT-H/14 (Paige, 1.5M slides); CLS ‖ mean patch token; {_gated(repo)}"
        ),
        tags=_TAGS,
        hf_repo=repo,
        hf_filename="pytorch_model.bin",
        gated=True,
    )


def h_optimus_0() -> ExtractorSpec:
    """H-optimus-0 (Bioptimus): ViT-g/14 with 4 registers, class token."""
    repo = "bioptimus/H-optimus-0"
    return ExtractorSpec(
        name="h-optimus-0",
        factory="histobag_apache.hoptimus:build_h_optimus_0",
        aliases=("hoptimus0",),
        license="Apache-2.0",
        license_url=_APACHE_URL,
        citation=foundation_citations.H_OPTIMUS_0,
        num_features=1536,
        input_size=224,
        # The model card feeds 224 px tiles at 0.5 mpp as they are (no resize or crop); a
        # user-requested resize uses bicubic like timm's DINOv2 configs.
        preprocessing=Preprocessing(
            interpolation="bicubic", antialias=True, mean=H_OPTIMUS_MEAN, std=H_OPTIMUS_STD
        ),
        description=(
            f"H-optimus-0 ViT-g/14 (Bioptimus); CLS; 224 px tiles at 0.5 mpp; {_gated(repo)}"
        ),
        tags=_TAGS,
        hf_repo=repo,
        hf_filename="pytorch_model.bin",
        gated=True,
    )


def specs() -> list[ExtractorSpec]:
    """Return the foundation models of this pack."""
    return [virchow(), h_optimus_0()]
