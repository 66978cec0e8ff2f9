"""Specs of the non-commercial models built on timm ViTs (UNI, UNI2-h, Virchow2, GigaPath tile).

Plain data: the factories are ``"module:attr"`` strings, so listing imports no torch or timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag_noncommercial import citations_timm

_CC_BY_NC_ND = "https://creativecommons.org/licenses/by-nc-nd/4.0/"
_TAGS = ("foundation", "pathology", "vit")

# Official pipelines run torchvision on PIL images, whose resampling always antialiases; the
# resize comes first, so a larger tile is scaled down whole rather than cropped.
_UNI_PRE = Preprocessing(
    resize=224, center_crop=224, resize_first=True, interpolation="bilinear", antialias=True
)
_VIRCHOW_PRE = _UNI_PRE.replace(interpolation="bicubic")
_GIGAPATH_PRE = _UNI_PRE.replace(resize=256, interpolation="bicubic")


def _gated(repo: str) -> str:
    return f"weights gated: request access on https://huggingface.co/{repo} first"


def uni() -> ExtractorSpec:
    """UNI (Mahmood Lab): ViT-L/16, class token."""
    repo = "MahmoodLab/UNI"
    return ExtractorSpec(
        name="uni",
        factory="histobag_noncommercial.uni:build_uni",
        license="CC-BY-NC-ND-4.0",
        license_url=_CC_BY_NC_ND,
        citation=citations_timm.UNI,
        num_features=1024,
        input_size=224,
        preprocessing=_UNI_PRE,
        description=f"UNI ViT-L/16 (Mahmood Lab, Mass-100K); CLS; non-commercial; {_gated(repo)}",
        tags=_TAGS,
        hf_repo=repo,
        hf_filename="pytorch_model.bin",
        gated=True,
    )


def uni2_h() -> ExtractorSpec:
    """UNI2-h (Mahmood Lab): ViT-H/14 with SwiGLU and 8 registers, class token."""
    repo = "MahmoodLab/UNI2-h"
    return ExtractorSpec(
        name="uni2-h",
        factory="histobag_noncommercial.uni2:build_uni2_h",
        aliases=("uni2",),
        license="CC-BY-NC-ND-4.0",
        license_url=_CC_BY_NC_ND,
        citation=citations_timm.UNI,
        num_features=1536,
        input_size=224,
        preprocessing=_UNI_PRE,
        description=(
            f"UNI2-h ViT-H/14, 8 registers (Mahmood Lab); CLS; non-commercial; {_gated(repo)}"
        ),
        tags=_TAGS,
        hf_repo=repo,
        hf_filename="pytorch_model.bin",
        gated=True,
    )


def virchow2() -> ExtractorSpec:
    """Virchow2 (Paige): ViT-H/14 with 4 registers, class token ‖ mean of the patch tokens."""
    repo = "paige-ai/Virchow2"
    return ExtractorSpec(
        name="virchow2",
        factory="histobag_noncommercial.virchow2:build_virchow2",
        license="CC-BY-NC-ND-4.0",
        license_url=_CC_BY_NC_ND,
        citation=citations_timm.VIRCHOW2,
        num_features=2560,
        input_size=224,
        preprocessing=_VIRCHOW_PRE,
        description=(
            "Virchow2 ViT-H/14, 4 registers (Paige); CLS ‖ mean patch token; non-commercial; "
            + _gated(repo)
        ),
        tags=_TAGS,
        hf_repo=repo,
        hf_filename="pytorch_model.bin",
        gated=True,
    )


def gigapath_tile() -> ExtractorSpec:
    """Prov-GigaPath's tile encoder: DINOv2 ViT-g with 16 px patches, class token."""
    repo = "prov-gigapath/prov-gigapath"
    return ExtractorSpec(
        name="gigapath.tile",
        factory="histobag_noncommercial.gigapath_tile:build_gigapath_tile",
        aliases=("gigapath-tile",),
        # The code is Apache-2.0, but the model card restricts the weights to research use
        # (no commercial or clinical use), which no SPDX identifier expresses.
        license="LicenseRef-prov-gigapath",
        license_url=f"https://huggingface.co/{repo}",
        citation=citations_timm.GIGAPATH,
        num_features=1536,
        input_size=224,
        preprocessing=_GIGAPATH_PRE,
        description=(
            "Prov-GigaPath tile encoder ViT-g/16 (Microsoft, Providence); CLS; research use "
            f"only, see the model card's terms; {_gated(repo)}"
        ),
        tags=_TAGS,
        hf_repo=repo,
        hf_filename="pytorch_model.bin",
        gated=True,
    )


def specs() -> list[ExtractorSpec]:
    """Return the models of this module."""
    return [uni(), uni2_h(), virchow2(), gigapath_tile()]
