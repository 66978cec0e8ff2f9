"""Specs of CTransPath and RetCCL: plain data, importable without torch or timm."""

from __future__ import annotations

from typing import Any

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import SpecTable

#: SPDX identifier. Both upstream repositories ship the GPL-3.0 text with no "or later" grant.
LICENSE = "GPL-3.0-only"

#: Digest of ``ctranspath.pth`` as published by the authors (mirrored on Hugging Face).
CTRANSPATH_SHA256 = "7c998680060c8743551a412583fac689db43cec07053b72dfec6dcd810113539"

#: Open weights on the Hub; self-supervised on pathology tiles by Wang et al.
TABLE = SpecTable("histobag_gpl", LICENSE, tags=("ssl", "pathology"))

#: Both models were trained on ImageNet-normalised tiles. The authors resized PIL images
#: (which antialias), so an opted-in ``resize=`` antialiases too; by default nothing is resized.
_PRE = Preprocessing(interpolation="bilinear", antialias=True)

#: name: (factory module, Hub repository, BibTeX key, num_features, preprocessing).
MODELS: dict[str, tuple[str, str, str, int, Preprocessing]] = {
    "ctranspath": ("ctranspath", "jamesdolezal/CTransPath", "wang2022ctranspath", 768, _PRE),
    "retccl": ("retccl", "jamesdolezal/RetCCL", "wang2023retccl", 2048, _PRE),
}

_ABOUT = {
    "ctranspath": (
        "CTransPath (Wang et al. 2022): Swin-T with a convolutional stem, self-supervised "
        "(semantically-relevant contrastive learning) on pathology tiles; final norm "
        "averaged over tokens. 224 px input only (resize=True for other tile sizes)."
    ),
    "retccl": (
        "RetCCL (Wang et al. 2023): ResNet-50, clustering-guided contrastive learning on "
        "pathology tiles; average-pooled 2048-d features. The authors fed 256 px tiles; "
        "any size runs, nothing is resized unless asked (resize=True gives 256)."
    ),
}


def _upstream_license(repo: str) -> str:
    return f"https://github.com/Xiyue-Wang/{repo}/blob/HEAD/LICENSE"


#: Fields beyond the table's: the authors' licence files, and each published checkpoint.
_OWN: dict[str, dict[str, Any]] = {
    "ctranspath": {
        "license_url": _upstream_license("TransPath"),
        "hf_filename": "ctranspath.pth",
        "sha256": CTRANSPATH_SHA256,
        "checkpoint_keys": ("model",),  # {'model': state_dict}
    },
    "retccl": {
        "license_url": _upstream_license("RetCCL"),
        "hf_filename": "retccl.pth",
        "input_size": 256,  # the tiles the authors fed; resize=True resizes to it
    },
}


def specs() -> list[ExtractorSpec]:
    """Every extractor histobag-gpl provides."""
    return [
        TABLE.spec(name, *row, description=_ABOUT[name], **_OWN[name])
        for name, row in MODELS.items()
    ]
