"""Specs of H-optimus-1 and H0-mini (Bioptimus): gated weights, not Apache-2.0.

Plain data: the factories are ``"module:attr"`` strings, so listing imports no torch or timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import SpecTable, pil_resize_crop

#: Bioptimus grant access to H-optimus-1 for academic research on request (commercial use is
#: licensed separately); no SPDX identifier says so, and the model card states the terms.
H_OPTIMUS_1_LICENSE = "LicenseRef-bioptimus-h-optimus-1"
#: H0-mini's terms are on its gated model card, which no public copy we could read shows;
#: third-party registries list CC-BY-NC-ND-4.0. Non-commercial pack, the card as reference.
H0_MINI_LICENSE = "LicenseRef-bioptimus-h0-mini"
_TAGS = ("foundation", "pathology", "vit")
_PACKAGE = "histobag_noncommercial"

#: Gated ``pytorch_model.bin`` files on the Hub, 224 px input; ``license_url=None``: the card.
TABLE = SpecTable(_PACKAGE, H_OPTIMUS_1_LICENSE, tags=_TAGS, gated=True)
H0_MINI_TABLE = SpecTable(_PACKAGE, H0_MINI_LICENSE, tags=_TAGS, gated=True)

#: Bioptimus's normalisation, the same for H-optimus-0, H-optimus-1 and H0-mini.
H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)

# The card feeds 224 px tiles at 0.5 mpp as they are (ToTensor, Normalize); a user-requested
# resize uses bicubic like timm's DINOv2 configs.
_H_OPTIMUS_PRE = Preprocessing(
    interpolation="bicubic", antialias=True, mean=H_OPTIMUS_MEAN, std=H_OPTIMUS_STD
)

# H0-mini's card uses timm's create_transform of the model's pretrained_cfg: 224 px input,
# timm's DINOv2 crop_pct 1.0 and bicubic, so Resize(224) then CenterCrop(224) on PIL images
# (224 px tiles at 0.5 mpp pass as they are, as in the authors' PLISM benchmark).
_H0_MINI_PRE = pil_resize_crop(
    224, 224, interpolation="bicubic", mean=H_OPTIMUS_MEAN, std=H_OPTIMUS_STD
)

_H0_MINI = "bioptimus/H0-mini"
_H0_MINI_KEY = "filiot2025distilling"

#: name: (table, factory module, Hub repository, BibTeX key, num_features, preprocessing).
MODELS: dict[str, tuple[SpecTable, str, str, str, int, Preprocessing]] = {
    "h-optimus-1": (TABLE, "bioptimus", "bioptimus/H-optimus-1", "hoptimus1", 1536, _H_OPTIMUS_PRE),
    "h0-mini": (H0_MINI_TABLE, "bioptimus_h0mini", _H0_MINI, _H0_MINI_KEY, 768, _H0_MINI_PRE),
    "h0-mini-cls-mean": (
        H0_MINI_TABLE,
        "bioptimus_h0mini",
        _H0_MINI,
        _H0_MINI_KEY,
        1536,
        _H0_MINI_PRE,
    ),
}

_H0_MINI_ABOUT = (
    "H0-mini ViT-B/14, 4 registers, SwiGLU (Bioptimus, distilled from H-optimus-0); "
    "224 px tiles at 0.5 mpp; non-commercial terms of the model card"
)
_ABOUT = {
    "h-optimus-1": (
        "H-optimus-1 ViT-g/14, 4 registers (Bioptimus, 1M+ slides); CLS; 224 px tiles at "
        "0.5 mpp; academic research use, see the model card's terms"
    ),
    "h0-mini": f"{_H0_MINI_ABOUT}; CLS",
    "h0-mini-cls-mean": f"{_H0_MINI_ABOUT}; CLS and mean of the patch tokens",
}

# The card runs H0-mini (a ViT-B, no overflow risk) under float16 autocast.
_FIELDS = {name: {"autocast_dtype": "float16"} for name in ("h0-mini", "h0-mini-cls-mean")}

_ALIASES = {"h-optimus-1": ("hoptimus1",), "h0-mini": ("h0mini",)}


def specs() -> list[ExtractorSpec]:
    """Return the Bioptimus models of this pack."""
    return [
        table.spec(
            name,
            *row,
            description=_ABOUT[name],
            aliases=_ALIASES.get(name, ()),
            **_FIELDS.get(name, {}),
        )
        for name, (table, *row) in MODELS.items()
    ]
