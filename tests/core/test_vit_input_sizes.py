"""A ViT built by ``timm_vit_build`` says what tile sizes it takes before timm fails on them."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

import histobag
from histobag.errors import ExtractorArgumentError
from histobag.extractors.vit import timm_vit_build
from histobag.specs import ExtractorSpec, Preprocessing
from tests.core.toy_models import registered

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 224}


def _build_dynamic(spec, **_):
    return timm_vit_build(
        "vit_small_patch16_224", {**TINY, "dynamic_img_size": True}, pooling="cls"
    )


def _build_fixed(spec, **_):
    return timm_vit_build("vit_small_patch16_224", TINY, pooling="cls")


@contextmanager
def _extractor(factory, name):
    spec = ExtractorSpec(
        name=name,
        factory=factory,
        license="MIT",
        num_features=32,
        preprocessing=Preprocessing(),  # no resize: tiles go in at their own size
        weights_required=False,
    )
    with registered(spec):
        yield histobag.build_feature_extractor(name, device="cpu", mixed_precision=False)


def _tiles(px):
    return np.random.default_rng(0).integers(0, 256, (2, px, px, 3), dtype=np.uint8)


def test_dynamic_size_vit_takes_whole_patches_and_names_the_patch_size_otherwise():
    with _extractor(_build_dynamic, "tiny-dynamic-vit") as extractor:
        assert extractor.input_multiple == 16 and extractor.fixed_input_size is None
        assert tuple(extractor(_tiles(112)).shape) == (2, 32)
        assert tuple(extractor(_tiles(96)).shape) == (2, 32)
        with pytest.raises(ExtractorArgumentError, match=r"multiples of 16.*100x100"):
            extractor(_tiles(100))


def test_fixed_size_vit_takes_only_its_size():
    with _extractor(_build_fixed, "tiny-fixed-vit") as extractor:
        assert extractor.fixed_input_size == 224 and extractor.input_multiple is None
        with pytest.raises(ExtractorArgumentError, match="only accepts 224x224"):
            extractor(_tiles(112))
