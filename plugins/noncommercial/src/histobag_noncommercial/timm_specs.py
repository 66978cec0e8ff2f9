"""Specs of the non-commercial models built on timm ViTs (UNI, UNI2-h, Virchow2, GigaPath tile).

Plain data: the factories are ``"module:attr"`` strings, so listing imports no torch or timm.
"""

from __future__ import annotations

from typing import Any

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import SpecTable, pil_resize_crop

CC_BY_NC_ND_URL = "https://creativecommons.org/licenses/by-nc-nd/4.0/"
_TAGS = ("foundation", "pathology", "vit")

#: Gated ``pytorch_model.bin`` files on the Hub, 224 px input, non-commercial weights.
TABLE = SpecTable(
    "histobag_noncommercial", "CC-BY-NC-ND-4.0", CC_BY_NC_ND_URL, tags=_TAGS, gated=True
)

GIGAPATH_REPO = "prov-gigapath/prov-gigapath"

# The official pipelines resize, then crop, PIL images.
_UNI_PRE = pil_resize_crop(224, 224, interpolation="bilinear")
_VIRCHOW_PRE = pil_resize_crop(224, 224, interpolation="bicubic")
_GIGAPATH_PRE = pil_resize_crop(256, 224, interpolation="bicubic")

#: name: (factory module, Hub repository, BibTeX key, num_features, preprocessing).
MODELS: dict[str, tuple[str, str, str, int, Preprocessing]] = {
    "uni": ("uni", "MahmoodLab/UNI", "chen2024uni", 1024, _UNI_PRE),
    "uni2-h": ("uni2", "MahmoodLab/UNI2-h", "chen2024uni", 1536, _UNI_PRE),
    "virchow2": ("virchow2", "paige-ai/Virchow2", "zimmermann2024virchow2", 2560, _VIRCHOW_PRE),
    "gigapath.tile": ("gigapath_tile", GIGAPATH_REPO, "xu2024gigapath", 1536, _GIGAPATH_PRE),
}

_ABOUT = {
    "uni": "UNI ViT-L/16 (Mahmood Lab, Mass-100K); CLS; non-commercial",
    "uni2-h": "UNI2-h ViT-H/14, 8 registers (Mahmood Lab); CLS; non-commercial",
    "virchow2": "Virchow2 ViT-H/14, 4 registers (Paige); CLS ‖ mean patch token; non-commercial",
    "gigapath.tile": (
        "Prov-GigaPath tile encoder ViT-g/16 (Microsoft, Providence); CLS; research use only, "
        "see the model card's terms"
    ),
}

#: Fields beyond the table's. GigaPath's code is Apache-2.0, but the model card restricts the
#: weights to research use (no commercial or clinical use), which no SPDX identifier expresses;
#: ``license_url=None`` points at that card.
_OWN: dict[str, dict[str, Any]] = {
    "uni2-h": {"aliases": ("uni2",)},
    "gigapath.tile": {
        "aliases": ("gigapath-tile",),
        "license": "LicenseRef-prov-gigapath",
        "license_url": None,
    },
}


def specs() -> list[ExtractorSpec]:
    """Return the models of this module."""
    return [
        TABLE.spec(name, *row, description=_ABOUT[name], **_OWN.get(name, {}))
        for name, row in MODELS.items()
    ]
