"""Specs of the Apache-2.0 pathology foundation models (Virchow, H-optimus-0).

Plain data: the factories are ``"module:attr"`` strings, so listing imports no torch or timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import SpecTable, pil_resize_crop

APACHE_URL = "https://www.apache.org/licenses/LICENSE-2.0"
_TAGS = ("foundation", "pathology", "vit")

#: Gated ``pytorch_model.bin`` files on the Hub, 224 px input, Apache-2.0 weights.
TABLE = SpecTable("histobag_apache", "Apache-2.0", APACHE_URL, tags=_TAGS, gated=True)

#: H-optimus-0's normalisation, computed by Bioptimus on its training tiles.
H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)

# Virchow: timm's eval transform of the published config (crop_pct 1.0) on PIL images.
_VIRCHOW_PRE = pil_resize_crop(224, 224, interpolation="bicubic")
# H-optimus-0: the model card feeds 224 px tiles at 0.5 mpp as they are (no resize or crop); a
# user-requested resize uses bicubic like timm's DINOv2 configs.
_H_OPTIMUS_PRE = Preprocessing(
    interpolation="bicubic", antialias=True, mean=H_OPTIMUS_MEAN, std=H_OPTIMUS_STD
)

#: name: (factory module, Hub repository, BibTeX key, num_features, preprocessing).
MODELS: dict[str, tuple[str, str, str, int, Preprocessing]] = {
    "virchow": ("virchow", "paige-ai/Virchow", "vorontsov2024virchow", 2560, _VIRCHOW_PRE),
    "h-optimus-0": ("hoptimus", "bioptimus/H-optimus-0", "hoptimus0", 1536, _H_OPTIMUS_PRE),
}

_ABOUT = {
    "virchow": "Virchow ViT-H/14 (Paige, 1.5M slides); CLS ‖ mean patch token",
    "h-optimus-0": "H-optimus-0 ViT-g/14 (Bioptimus); CLS; 224 px tiles at 0.5 mpp",
}

_ALIASES = {"h-optimus-0": ("hoptimus0",)}


def specs() -> list[ExtractorSpec]:
    """Return the foundation models of this pack."""
    return [
        TABLE.spec(name, *row, description=_ABOUT[name], aliases=_ALIASES.get(name, ()))
        for name, row in MODELS.items()
    ]
