import numpy as np
import pytest
import torch

import histobag
from histobag.errors import (
    DuplicateExtractorError,
    ExtractorArgumentError,
    UnknownExtractorError,
)
from histobag.plugins import PluginWarning
from tests.core.toy_models import build_toy, registered, toy_spec


def test_in_process_plugin_is_listed_built_and_run(tiles224):
    with registered(toy_spec()):
        assert "toy" in histobag.list_extractors()
        assert histobag.list_extractors(tag="test") == ["toy"]
        assert histobag.extractor_info("TOY-ALIAS").name == "toy"
        assert histobag.extractor_info("toy").pack == "<in-process>"
        fe = histobag.build_feature_extractor("toy", weights="random", device="cpu")
        out = fe(tiles224)
        assert out.shape == (4, 8) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    assert "toy" not in histobag.list_extractors()


def test_register_extractor_decorator():
    @histobag.register_extractor(
        name="decorated", license="MIT", num_features=8, weights_required=False
    )
    def factory(spec):
        return build_toy(spec)

    try:
        fe = histobag.build_feature_extractor("decorated", device="cpu")
        assert fe(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 8)
        assert fe.weights_source == "none"
    finally:
        manager = histobag.plugins.get_plugin_manager()
        histobag.unregister_plugin(manager.get_plugin("extractor:decorated"))
    assert "decorated" not in histobag.list_extractors()


def test_duplicate_names_name_both_providers():
    with registered(toy_spec()), registered(toy_spec(name="other", aliases=("toy",))):
        with pytest.warns(PluginWarning, match="'<in-process>' and '<in-process>'"):
            names = histobag.list_extractors()
        assert "toy" not in names and "other" in names  # neither wins "toy"
        with pytest.raises(DuplicateExtractorError, match="'<in-process>' and '<in-process>'"):
            histobag.extractor_info("toy")


def test_duplicate_of_an_installed_pack_names_it():
    with registered(toy_spec(name="resnet50_imagenet", aliases=())):
        with pytest.warns(PluginWarning, match="histobag-apache"):
            names = histobag.list_extractors()
        assert "resnet50_imagenet" not in names and "resnet18_imagenet" in names
        with pytest.raises(DuplicateExtractorError) as err:
            histobag.build_feature_extractor("resnet50_imagenet")
    assert "histobag-apache" in str(err.value) and "<in-process>" in str(err.value)


def test_filters_by_license_tag_and_pack():
    with registered(toy_spec()):
        assert histobag.list_extractors(license="mit") == sorted(
            n for n in histobag.list_extractors() if histobag.extractor_info(n).license == "MIT"
        )
        assert "toy" in histobag.list_extractors(license="MIT")
        assert "toy" not in histobag.list_extractors(license="Apache-2.0")
        assert histobag.list_extractors(pack="<in-process>") == ["toy"]
    imagenet = histobag.list_extractors(tag="imagenet")
    assert "resnet50_imagenet" in imagenet and "vit_base_patch16_224_imagenet" in imagenet


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownExtractorError, match="Did you mean: resnet50_imagenet"):
        histobag.build_feature_extractor("resnet50_imagnet")


def test_unknown_keyword_lists_accepted_ones():
    with registered(toy_spec()):
        with pytest.raises(ExtractorArgumentError) as err:
            histobag.build_feature_extractor("toy", weights="random", depth=3)
    message = str(err.value)
    assert "depth" in message and "width" in message and "norm_mean" in message


def test_required_model_kwarg():
    with registered(toy_spec(required_kwargs=("width",))):
        with pytest.raises(ExtractorArgumentError, match=r"width=\.\.\."):
            histobag.build_feature_extractor("toy", weights="random")


def test_model_kwargs_reach_the_factory_and_the_config():
    with registered(toy_spec(num_features=None)):
        fe = histobag.build_feature_extractor(
            "toy", weights="random", width=5, resize=False, mixed_precision=False, device="cpu"
        )
        assert fe(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 5)
        assert fe.dump_config() == {
            "extractor": "toy",
            "kwargs": {"resize": False, "weights": "random", "mixed_precision": False, "width": 5},
        }


def test_metadata_properties():
    with registered(toy_spec()):
        fe = histobag.build_feature_extractor("toy", weights="random", device="cpu")
    assert fe.license == "MIT"
    assert fe.citation == "@misc{toy}"
    assert fe.tag == "toy"
    assert fe.num_features == 8
    assert fe.spec.name == "toy"
    assert fe.provenance()["preprocessing"]["resize"] == 48


def test_rejects_non_uint8_and_odd_shapes():
    with registered(toy_spec()):
        fe = histobag.build_feature_extractor("toy", weights="random", device="cpu")
    with pytest.raises(ExtractorArgumentError, match="uint8"):
        fe(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ExtractorArgumentError, match=r"\(B, H, W, 3\)"):
        fe(np.zeros((1, 32, 32, 4), np.uint8))
    with pytest.raises(ExtractorArgumentError, match="Cannot extract"):
        fe([1, 2, 3])


def test_mixed_precision_outputs_float32_and_is_close_to_fp32(tiles224):
    with registered(toy_spec()):
        fp32 = histobag.build_feature_extractor(
            "toy", weights="random", mixed_precision=False, device="cpu"
        )
        mixed = histobag.build_feature_extractor("toy", weights="random", device="cpu")
    mixed.model.load_state_dict(fp32.model.state_dict())
    assert fp32.precision == "float32"
    from histobag.extractors.base import cpu_supports_bf16

    assert mixed.precision == ("bfloat16" if cpu_supports_bf16() else "float32")
    a, b = fp32(tiles224), mixed(tiles224)
    assert b.dtype == torch.float32
    assert torch.allclose(a, b, atol=0.1, rtol=0.05)
