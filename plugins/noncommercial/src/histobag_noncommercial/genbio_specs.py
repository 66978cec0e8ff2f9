"""Spec of GenBio-PathFM (GenBio AI), released under the GenBio AI Community License.

Plain data: listing it imports no torch.
"""

from __future__ import annotations

from histobag import ExtractorSpec
from histobag.extractors.hub import SpecTable, pil_resize_crop

REPO = "genbio-ai/genbio-pathfm"
#: The repository's README names this licence; its terms are not an SPDX licence.
LICENSE_URL = "https://github.com/genbio-ai/genbio-pathfm/blob/main/LICENSE.txt"

#: The normalisation of the official ``GenBio_PathFM_Inference.transform``.
GENBIO_MEAN = (0.697, 0.575, 0.728)
GENBIO_STD = (0.188, 0.240, 0.187)

TABLE = SpecTable(
    "histobag_noncommercial",
    "LicenseRef-genbio-ai-community",
    LICENSE_URL,
    tags=("foundation", "pathology", "vit"),
    filename="model.pth",
)

#: The official transform: Resize(224) (bilinear), CenterCrop(224), on PIL images.
PREPROCESSING = pil_resize_crop(
    224, 224, interpolation="bilinear", mean=GENBIO_MEAN, std=GENBIO_STD
)

ABOUT = (
    "GenBio-PathFM (GenBio AI): DINOv3-style ViT-g/16 (4 storage tokens, RoPE) on each colour "
    "channel; R ‖ G ‖ B class tokens; GenBio AI Community License, see the repository"
)


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [
        TABLE.spec(
            "genbio-pathfm",
            "genbio",
            REPO,
            "kapse2026genbiopathfm",
            4608,
            PREPROCESSING,
            description=ABOUT,
        )
    ]
