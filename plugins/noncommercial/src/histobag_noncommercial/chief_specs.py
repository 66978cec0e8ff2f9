"""Specs of CHIEF (Wang et al., Nature 2024): its CTransPath tile encoder and its slide encoder.

Plain data: listing them imports no torch or timm.

Licence. The repository's ``LICENSE`` file is the GNU AGPL v3, while its README states that
CHIEF "is made available under the GPLv3 License and is available for non-commercial academic
purposes", and the weights are shared on request (Google Drive) or inside the authors' Docker
image. No SPDX identifier says all of that, and the non-commercial statement is the strictest
reading, so both models are in this pack under a ``LicenseRef``.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing, SlideInput
from histobag.extractors.hub import bibtex_entries

_PACKAGE = "histobag_noncommercial"
_REPO_URL = "https://github.com/hms-dbmi/CHIEF"
LICENSE = "LicenseRef-CHIEF"
LICENSE_URL = f"{_REPO_URL}#license"
CITATION = bibtex_entries(_PACKAGE)["wang2024chief"]

#: Where the authors publish the weights (neither file is on a Hugging Face model repository).
WEIGHTS_FOLDER = "https://drive.google.com/drive/folders/1uRv9A1HuTW5m_pJoyMzdN31bE1i-tDaV"
DOCKER_IMAGE = "https://hub.docker.com/r/chiefcontainer/chief"
#: Where TRIDENT downloads CHIEF_CTransPath.pth from (a dataset repository, not a model one).
HEST_MIRROR = "MahmoodLab/hest-bench, fm_v1/ctranspath/"

TILE_ENCODER = "chief-ctranspath"
TILE_WEIGHTS = "CHIEF_CTransPath.pth"
SLIDE_WEIGHTS = "CHIEF_pretraining.pth"

#: The geometry of TRIDENT's CHIEF pipeline (``--patch_size 256 --mag 10``).
TILE_PX, MAGNIFICATION = 256, 10.0

_TERMS = "AGPL-3.0 licence file, README: non-commercial academic use only"


def where_to_get(filename: str) -> str:
    """One sentence: where ``filename`` is published and how to pass it."""
    return (
        f"Request {filename} from the authors' Google Drive "
        f"folder {WEIGHTS_FOLDER} (linked from {_REPO_URL}; also in the Docker image "
        f"{DOCKER_IMAGE}) and pass weights='/path/to/{filename}'."
    )


def chief_ctranspath() -> ExtractorSpec:
    """CHIEF's tile encoder: CTransPath's network with the weights CHIEF trained."""
    return ExtractorSpec(
        name=TILE_ENCODER,
        factory=f"{_PACKAGE}.chief_ctranspath:build_chief_ctranspath",
        aliases=("ctranspath-chief", "chief_ctranspath"),
        license=LICENSE,
        license_url=LICENSE_URL,
        citation=CITATION,
        num_features=768,
        input_size=224,
        # The official transform: PIL Resize(224) (bilinear, which antialiases), ToTensor,
        # ImageNet Normalize, on 256 px tiles at 10x.
        preprocessing=Preprocessing(resize=224, interpolation="bilinear", antialias=True),
        description=(
            "CHIEF-CTransPath (Wang et al., Nature 2024): CTransPath's Swin-T with conv stem "
            "(the ctranspath network of histobag-gpl, which must be installed) with CHIEF's "
            "own weights; 768-d; tiles of 256 px at 10x resized to 224, as the official code; "
            f"the tile encoder of the 'chief' slide encoder; {_TERMS}; weights on request "
            f"(TRIDENT fetches the same file from the Hugging Face dataset {HEST_MIRROR})"
        ),
        weights_help=where_to_get(TILE_WEIGHTS),
        tags=("foundation", "pathology", "ssl", "swin"),
        hf_filename=TILE_WEIGHTS,
        checkpoint_keys=("model",),  # {'model': state_dict}, loaded strictly by the authors
    )


def chief_slide() -> ExtractorSpec:
    """CHIEF's slide encoder: gated attention pooling of CHIEF-CTransPath tile features."""
    return ExtractorSpec(
        name="chief",
        factory=f"{_PACKAGE}.chief:build_chief",
        aliases=("chief-slide",),
        license=LICENSE,
        license_url=LICENSE_URL,
        citation=CITATION,
        num_features=768,
        description=(
            "CHIEF slide encoder (Wang et al., Nature 2024): gated-attention pooling of "
            "768-d chief-ctranspath tile features -> 768-d slide embedding (the official "
            "'WSI_feature': attention-weighted mean of the tile features, as TRIDENT returns "
            "it; runs in float32); coordinates unused; call it as f(features, coords) or "
            f".generate_and_save(bags_dir, outdir), not on images; {_TERMS}; weights on "
            "request (see weights_help)"
        ),
        weights_help=where_to_get(SLIDE_WEIGHTS),
        tags=("slide-encoder", "foundation", "pathology"),
        kind="tile_features",
        slide_input=SlideInput(
            tile_encoders=(TILE_ENCODER,),
            tile_px=TILE_PX,
            magnification=MAGNIFICATION,
            coordinates="ignored (attention pooling is permutation invariant)",
        ),
        hf_filename=SLIDE_WEIGHTS,  # a flat state dict
    )


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [chief_ctranspath(), chief_slide()]
