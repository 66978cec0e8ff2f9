"""One build path for registered models and saved-model folders, and one
``PreprocessingOverrides`` for both and for the error messages."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

import histobag
from histobag.errors import ConfigError, ExtractorArgumentError
from histobag.extractors import builder
from histobag.extractors.base import ModelBuild
from histobag.extractors.builder import WeightsMismatchWarning
from histobag.extractors.preprocess import PreprocessingOverrides
from histobag.extractors.saved import (
    _fill_tied,
    extractor_from_saved_model,
    save_model,
    saved_model_spec,
)
from histobag.specs import Preprocessing
from tests.core.toy_models import ToyNet, registered, toy_spec

TILE_PX = 32


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    network = timm.create_model("test_resnet", num_classes=2).eval()
    folder = tmp_path_factory.mktemp("model") / "tumor_model"
    return save_model(
        network, folder, arch="test_resnet", tile_px=TILE_PX, tile_um=16, outcome_labels="ab"
    )


def _tiles(n=2):
    return np.random.default_rng(0).integers(0, 256, (n, TILE_PX, TILE_PX, 3), dtype=np.uint8)


# -- PreprocessingOverrides ---------------------------------------------------------------------


def test_overrides_are_the_dataclass_fields_and_split_from_model_kwargs():
    names = PreprocessingOverrides.names()
    assert names == tuple(f.name for f in dataclasses.fields(PreprocessingOverrides))
    given = {name: None for name in names} | {"width": 5, "resize": 300}
    overrides, rest = PreprocessingOverrides.split(given)
    assert rest == {"width": 5}
    assert overrides == PreprocessingOverrides(resize=300)


def test_overrides_apply_and_record_as_json():
    default = Preprocessing(resize=256, center_crop=224, interpolation="bicubic")
    overrides = PreprocessingOverrides(
        resize=True, center_crop=False, antialias=True, norm_mean=[0, 0.5, 1], norm_std=(1, 2, 3)
    )
    pre = overrides.apply(default, 96)
    assert (pre.resize, pre.center_crop, pre.interpolation, pre.antialias) == (
        96,
        None,
        "bicubic",
        True,
    )
    assert pre.mean == (0.0, 0.5, 1.0) and pre.std == (1.0, 2.0, 3.0)
    recorded = overrides.recorded()
    assert recorded == {
        "resize": True,
        "center_crop": False,
        "antialias": True,
        "norm_mean": [0.0, 0.5, 1.0],
        "norm_std": [1.0, 2.0, 3.0],
    }
    assert json.loads(json.dumps(recorded)) == recorded
    assert PreprocessingOverrides(**recorded) == overrides  # what a rebuild passes back
    assert PreprocessingOverrides().apply(default, 96) == default
    assert PreprocessingOverrides().recorded() == {}


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"resize": -3}, "-3"),
        ({"center_crop": 2.5}, "2.5"),
        ({"interpolation": "lanczos"}, "'lanczos'"),
        ({"antialias": "yes"}, "'yes'"),
        ({"norm_mean": [0.5, 0.5]}, "[0.5, 0.5]"),
        ({"norm_mean": "abc"}, "'abc'"),
        ({"norm_std": (0.2, 0.0, 0.2)}, "(0.2, 0.0, 0.2)"),
        ({"norm_std": (0.2, float("nan"), 0.2)}, "nan"),
    ],
)
def test_overrides_check_their_values(kwargs, shown):
    with pytest.raises(ExtractorArgumentError) as err:
        PreprocessingOverrides(**kwargs)
    message = str(err.value)
    assert next(iter(kwargs)) in message and shown in message


def test_accepted_arguments_list_every_override():
    with registered(toy_spec()):
        with pytest.raises(ExtractorArgumentError) as err:
            histobag.build_feature_extractor("toy", weights="random", depth=3)
    accepted = str(err.value).split("Accepted: ")[1]
    for name in ("weights", "device", "mixed_precision", *PreprocessingOverrides.names()):
        assert name in accepted
    assert accepted.endswith("model-specific: width.")


def test_bad_overrides_fail_before_the_factory_runs():
    calls = []

    def factory(spec, **kwargs):
        calls.append(kwargs)
        return ToyNet()

    with registered(toy_spec(factory=factory)):
        for bad in ({"interpolation": "lanczos"}, {"resize": 0}, {"norm_std": (1, 1, 0)}):
            with pytest.raises(ExtractorArgumentError):
                histobag.build_feature_extractor("toy", weights="random", device="cpu", **bad)
        assert calls == []
        histobag.build_feature_extractor("toy", weights="random", device="cpu")
    assert calls == [{}]


# -- one builder ---------------------------------------------------------------------------------


def test_registered_and_saved_models_take_the_same_builder(saved, monkeypatch):
    seen = []
    load = builder._load_weights

    def spy(spec, build, weights):
        seen.append(spec.name)
        return load(spec, build, weights)

    monkeypatch.setattr(builder, "_load_weights", spy)
    with registered(toy_spec()):
        histobag.build_feature_extractor("toy", weights="random", device="cpu")
    histobag.build_feature_extractor(str(saved), device="cpu")
    extractor_from_saved_model(saved, device="cpu")
    assert seen == ["toy", "tumor_model", "tumor_model"]


def test_a_saved_model_is_a_spec_with_its_own_arguments(saved):
    spec = saved_model_spec(saved)
    assert spec.name == "tumor_model" and spec.kind == "tiles"
    assert spec.model_kwargs == ("layers", "pooling", "include_logits")
    assert spec.input_size == TILE_PX
    config = json.loads((saved / "config.json").read_text())
    assert spec.preprocessing.to_dict() == config["preprocessing"]
    with pytest.raises(ExtractorArgumentError, match=r"Accepted: .*layers, pooling"):
        histobag.build_feature_extractor(str(saved), device="cpu", depth=3)
    with pytest.raises(ConfigError):
        saved_model_spec(saved.parent)


def test_saved_models_take_overrides_and_record_them_like_registered_ones(saved):
    fe = histobag.build_feature_extractor(
        str(saved),
        device="cpu",
        mixed_precision=False,
        resize=True,
        norm_mean=(0.5, 0.5, 0.5),
        layers="postconv",  # the default: not recorded
        pooling="avg",
        include_logits=False,
    )
    config = fe.dump_config()
    assert config == {
        "extractor": str(saved.resolve()),
        "kwargs": {"resize": True, "norm_mean": [0.5, 0.5, 0.5], "mixed_precision": False},
    }
    assert fe.preprocessing.resize == TILE_PX and fe.preprocessing.mean == (0.5, 0.5, 0.5)
    again = histobag.build_feature_extractor(config["extractor"], **config["kwargs"])
    assert again.dump_config() == config
    assert torch.equal(fe(_tiles()), again(_tiles()))


def test_a_saved_model_loads_its_own_file_by_default_and_random_on_request(saved):
    own = histobag.build_feature_extractor(str(saved), device="cpu", mixed_precision=False)
    assert own.weights_source == str(saved.resolve() / "model.safetensors")
    assert "weights" not in own.dump_config()["kwargs"]
    random = histobag.build_feature_extractor(
        str(saved), weights="random", device="cpu", mixed_precision=False
    )
    assert random.weights_source == "random" and random.weights_sha256 is None
    assert random.dump_config()["kwargs"]["weights"] == "random"
    assert not torch.equal(own(_tiles()), random(_tiles()))
    # a folder holding the weights, as for registered models
    folder = histobag.build_feature_extractor(
        str(saved), weights=saved, device="cpu", mixed_precision=False
    )
    assert folder.weights_sha256 == own.weights_sha256
    assert folder.dump_config()["kwargs"]["weights"] == str(saved.resolve() / "model.safetensors")


def test_an_old_saved_model_bags_config_rebuilds(saved):
    """kwargs as the former saved-model builder recorded them (normalised layers list)."""
    old = {"layers": ["layer1", "postconv"], "pooling": "max", "include_logits": True}
    old |= {"mixed_precision": False, "norm_std": [0.25, 0.25, 0.25]}
    fe = histobag.build_feature_extractor(str(saved.resolve()), **old)
    assert fe.dump_config()["kwargs"] == old
    assert fe.num_logits == 2 and fe(_tiles()).shape[1] == fe.num_features


def test_tied_tensors_are_filled_by_the_adapter():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = torch.nn.Linear(3, 3)
            self.b.weight = self.a.weight

    network = Tied()
    saved = {k: torch.ones_like(v) for k, v in network.state_dict().items() if k != "b.weight"}
    filled = _fill_tied(network, saved)
    assert set(filled) == set(network.state_dict())
    assert filled["b.weight"].data_ptr() == network.a.weight.data_ptr()
    untied_missing = _fill_tied(network, {k: v for k, v in saved.items() if k != "a.bias"})
    assert "a.bias" not in untied_missing  # only shared tensors are filled


def test_a_build_s_default_weights_and_recorded_kwargs(tmp_path):
    file = tmp_path / "toy.safetensors"
    reference = ToyNet()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(file))

    def factory(spec, *, width=8):
        return ModelBuild(
            module=ToyNet(width), default_weights=file, recorded_kwargs={"width": "eight"}
        )

    with registered(toy_spec(factory=factory)):
        fe = histobag.build_feature_extractor("toy", device="cpu", width=8)
    assert fe.weights_source == str(file)
    for key, value in reference.state_dict().items():
        assert torch.equal(fe.model.state_dict()[key].cpu(), value)
    assert fe.dump_config() == {"extractor": "toy", "kwargs": {"width": "eight"}}


def test_a_mismatch_warning_points_at_the_caller(tmp_path):
    file = tmp_path / "toy.safetensors"
    save_file({k: v.contiguous() for k, v in ToyNet().state_dict().items()}, str(file))
    with registered(toy_spec(sha256="0" * 64)):
        with pytest.warns(WeightsMismatchWarning, match="not the official toy") as record:
            histobag.build_feature_extractor("toy", weights=file, device="cpu")
    assert record[0].filename == __file__


def test_histobag_extract_takes_a_saved_model_folder(saved, tmp_path):
    from histobag.bags.read import read_bag
    from histobag.cli import main
    from histobag.slide import WSI
    from tests.core.bag_helpers import make_slides

    slides = make_slides(tmp_path / "slides", n=1)
    outdir = tmp_path / "bags"
    args = ["extract", "--extractor", str(saved), "--slides", str(slides), "--tile-px"]
    args += [str(TILE_PX), "--tile-um", "16", "--outdir", str(outdir), "--workers", "0"]
    assert main([*args, "--no-progress"]) == 0
    features, _, _ = read_bag(outdir, "slide-0")
    wsi = WSI(slides / "slide-0.svs", TILE_PX, 16)
    tiles, kept = wsi.read_tiles(np.arange(len(wsi)), return_mask=True)  # tissue filters
    reference = extractor_from_saved_model(saved, device="cpu", mixed_precision=False)
    expected = reference(tiles[kept]).numpy()
    assert features.shape == (int(kept.sum()), reference.num_features)
    np.testing.assert_allclose(features, expected, atol=1e-5)
