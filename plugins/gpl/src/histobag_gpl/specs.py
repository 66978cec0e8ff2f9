"""Specs of CTransPath and RetCCL: plain data, importable without torch or timm."""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag_gpl import citations

#: SPDX identifier. Both upstream repositories ship the GPL-3.0 text with no "or later" grant.
LICENSE = "GPL-3.0-only"

#: Digest of ``ctranspath.pth`` as published by the authors (mirrored on Hugging Face).
CTRANSPATH_SHA256 = "7c998680060c8743551a412583fac689db43cec07053b72dfec6dcd810113539"

#: Both models were trained on ImageNet-normalised tiles. The authors resized PIL images
#: (which antialias), so an opted-in ``resize=`` antialiases too; by default nothing is resized.
_PREPROCESSING = Preprocessing(interpolation="bilinear", antialias=True)


def ctranspath_spec() -> ExtractorSpec:
    """CTransPath: Swin-T with a convolutional stem, self-supervised on pathology tiles."""
    return ExtractorSpec(
        name="ctranspath",
        factory="histobag_gpl.ctranspath:build_ctranspath",
        license=LICENSE,
        license_url="https://github.com/Xiyue-Wang/TransPath/blob/HEAD/LICENSE",
        citation=citations.CTRANSPATH,
        num_features=768,
        input_size=224,
        preprocessing=_PREPROCESSING,
        description=(
            "CTransPath (Wang et al. 2022): Swin-T with a convolutional stem, self-supervised "
            "(semantically-relevant contrastive learning) on pathology tiles; final norm "
            "averaged over tokens. 224 px input only (resize=True for other tile sizes)."
        ),
        tags=("ssl", "pathology"),
        hf_repo="jamesdolezal/CTransPath",
        hf_filename="ctranspath.pth",
        gated=False,
        sha256=CTRANSPATH_SHA256,
        checkpoint_keys=("model",),
    )


def retccl_spec() -> ExtractorSpec:
    """RetCCL: ResNet-50, clustering-guided contrastive learning on pathology tiles."""
    return ExtractorSpec(
        name="retccl",
        factory="histobag_gpl.retccl:build_retccl",
        license=LICENSE,
        license_url="https://github.com/Xiyue-Wang/RetCCL/blob/HEAD/LICENSE",
        citation=citations.RETCCL,
        num_features=2048,
        # The authors fed 256 px tiles; resize=True resizes to that, the default keeps tiles.
        input_size=256,
        preprocessing=_PREPROCESSING,
        description=(
            "RetCCL (Wang et al. 2023): ResNet-50, clustering-guided contrastive learning on "
            "pathology tiles; average-pooled 2048-d features. The authors fed 256 px tiles; "
            "any size runs, nothing is resized unless asked (resize=True gives 256)."
        ),
        tags=("ssl", "pathology"),
        hf_repo="jamesdolezal/RetCCL",
        hf_filename="retccl.pth",
        gated=False,
    )


def specs() -> list[ExtractorSpec]:
    """Every extractor histobag-gpl provides."""
    return [ctranspath_spec(), retccl_spec()]
