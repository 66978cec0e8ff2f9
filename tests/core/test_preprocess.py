import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

import histobag
from histobag.errors import ExtractorArgumentError
from histobag.extractors.preprocess import PreprocessingOverrides, output_size
from histobag.specs import Preprocessing
from tests.core.toy_models import registered, toy_spec

DEFAULT = Preprocessing(center_crop=224, resize=256, interpolation="bicubic")


@pytest.mark.parametrize(
    ("kwargs", "resize", "crop"),
    [
        ({}, 256, 224),
        ({"resize": True}, 224, 224),
        ({"resize": False}, None, 224),
        ({"resize": 300, "center_crop": False}, 300, None),
        ({"center_crop": True}, 256, 224),
        ({"center_crop": 100}, 256, 100),
    ],
)
def test_resize_and_crop_overrides(kwargs, resize, crop):
    pre = PreprocessingOverrides(**kwargs).apply(DEFAULT, 224)
    assert (pre.resize, pre.center_crop) == (resize, crop)


def test_other_overrides_and_validation():
    pre = PreprocessingOverrides(
        interpolation="nearest", antialias=True, norm_mean=(0.1, 0.2, 0.3), norm_std=(1, 1, 1)
    ).apply(DEFAULT, 224)
    assert pre.interpolation == "nearest" and pre.antialias
    assert pre.mean == (0.1, 0.2, 0.3) and pre.std == (1.0, 1.0, 1.0)
    with pytest.raises(ExtractorArgumentError, match="interpolation"):
        PreprocessingOverrides(interpolation="lanczos")
    with pytest.raises(ExtractorArgumentError, match="positive int"):
        PreprocessingOverrides(resize=-3)


def test_transform_prints_crop_then_resize_by_default():
    with registered(toy_spec()):
        fe = histobag.build_feature_extractor("toy", weights="random", device="cpu")
    text = repr(fe.transform)
    assert text.index("CenterCrop") < text.index("Resize")
    assert "size=[48]" in text and "bicubic" in text.lower()
    assert "Normalize(mean=[0.485, 0.456, 0.406]" in text


def test_spec_can_declare_resize_then_crop():
    pre = Preprocessing(resize=256, center_crop=224, resize_first=True)
    with registered(toy_spec(preprocessing=pre)):
        fe = histobag.build_feature_extractor("toy", weights="random", device="cpu")
    text = repr(fe.transform)
    assert text.index("Resize") < text.index("CenterCrop")
    assert output_size(pre, 512, 512) == (224, 224)
    assert "1. to float" in pre.describe() and "2. resize 256" in pre.describe()


def test_pipeline_matches_torchvision_functional(tiles224):
    pre = Preprocessing(
        center_crop=200,
        resize=96,
        interpolation="bilinear",
        antialias=True,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.3, 0.4),
    )
    with registered(toy_spec(preprocessing=pre)):
        fe = histobag.build_feature_extractor("toy", weights="random", device="cpu")
    batch = torch.from_numpy(tiles224).permute(0, 3, 1, 2)
    expected = F.normalize(
        F.resize(
            F.center_crop(batch.float() / 255, [200]),
            [96],
            interpolation=InterpolationMode.BILINEAR,
            antialias=True,
        ),
        mean=[0.5, 0.4, 0.3],
        std=[0.2, 0.3, 0.4],
    )
    got = fe.preprocess(batch)
    assert got.shape == (4, 3, 96, 96)
    assert torch.allclose(got, expected, atol=1e-5)


def test_output_size_keeps_aspect_ratio():
    pre = Preprocessing(resize=100)
    assert output_size(pre, 200, 400) == (100, 200)
    assert output_size(pre, 400, 200) == (200, 100)
