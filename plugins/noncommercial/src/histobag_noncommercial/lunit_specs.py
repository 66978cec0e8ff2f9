"""Spec of Lunit's DINO ViT-S/8 ("Benchmarking self-supervised learning on diverse pathology
datasets", CVPR 2023).

Lunit publishes the weights as a GitHub release file (``dino_vit_small_patch8_ep200.torch``,
a flat timm ``VisionTransformer`` state dict); the Hub copy used by default is 1aurent's
``model.safetensors`` of the same tensors, the one TRIDENT loads. The release file passed as
``weights=`` loads too. Plain data: listing imports no torch or timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import SpecTable

LUNIT_LICENSE = "LicenseRef-lunit-non-commercial"
LUNIT_LICENSE_URL = "https://github.com/lunit-io/benchmark-ssl-pathology/blob/main/LICENSE"

#: The standardisation Lunit trained its ViT-S models with (as kaiko.ai's eva records it).
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)

TABLE = SpecTable(
    "histobag_noncommercial",
    LUNIT_LICENSE,
    LUNIT_LICENSE_URL,
    tags=("foundation", "pathology", "vit"),
    filename="model.safetensors",
)

# The authors publish no inference transform: the network takes 224 px tiles as they are
# (img_size=224, no interpolation of the position embeddings); a resize asked for with
# resize=True is bilinear and antialiased.
_LUNIT_PRE = Preprocessing(interpolation="bilinear", antialias=True, mean=LUNIT_MEAN, std=LUNIT_STD)

#: name: (factory module, Hub repository, BibTeX key, num_features, preprocessing).
MODELS: dict[str, tuple[str, str, str, int, Preprocessing]] = {
    "lunit-vits8": (
        "lunit",
        "1aurent/vit_small_patch8_224.lunit_dino",
        "kang2023benchmarking",
        384,
        _LUNIT_PRE,
    ),
}

_ABOUT = {"lunit-vits8": "Lunit DINO ViT-S/8 (19M TCGA patches); CLS; 224 px; non-commercial"}


def specs() -> list[ExtractorSpec]:
    """Return Lunit's model."""
    return [TABLE.spec(name, *row, description=_ABOUT[name]) for name, row in MODELS.items()]
