"""A local weights file in ``bags_config.json``: recorded absolute with its sha256, compared by
its sha256, found again from any directory, and a clear error when it moved."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

import histobag
from histobag.bags.config import differences, make_config, rebuild_from_config
from histobag.errors import (
    ConfigError,
    ExtractorArgumentError,
    HistobagError,
    WeightsError,
    WeightsNotFoundError,
)
from histobag.extractors.weights import sha256sum
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, PixelNet, make_slides
from tests.core.toy_models import registered, toy_spec
from tests.helpers import perturb_


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return make_slides(tmp_path_factory.mktemp("provenance-slides"), n=2)


@pytest.fixture(autouse=True)
def pixelnet():
    with registered(PIXELNET, toy_spec()):
        yield


def _save_weights(path, seed=0):
    net = PixelNet()
    if seed:
        perturb_(net, seed=seed)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return path


def _build(weights, name="pixelnet", **kwargs):
    return histobag.build_feature_extractor(
        name, weights=weights, device="cpu", mixed_precision=False, **kwargs
    )


def _config(extractor):
    return make_config(
        extractor, None, tile_px=TILE_PX, tile_um=TILE_UM, writer="pt", coordinates="centre"
    )


def _write_config(folder, extractor, tamper=None):
    folder.mkdir(parents=True, exist_ok=True)
    config = _config(extractor)
    if tamper:
        tamper(config)
    (folder / "bags_config.json").write_text(json.dumps(config))
    return folder


def _tiles():
    return torch.randint(0, 256, (2, 3, TILE_PX, TILE_PX), dtype=torch.uint8)


def test_weights_are_recorded_absolute_with_their_sha256(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save_weights(tmp_path / "r18.safetensors")
    fe = _build("r18.safetensors")
    config = _config(fe)
    assert config["extractor"]["kwargs"]["weights"] == str(tmp_path.resolve() / "r18.safetensors")
    assert config["provenance"]["weights_sha256"] == sha256sum(tmp_path / "r18.safetensors")
    assert config["provenance"]["weights_source"] == config["extractor"]["kwargs"]["weights"]


def test_relative_and_dot_relative_weights_resume_the_same_bags(tmp_path, monkeypatch, slides):
    """`--weights r18.safetensors`, then `--weights ./r18.safetensors`: one configuration."""
    monkeypatch.chdir(tmp_path)
    _save_weights(tmp_path / "r18.safetensors")
    ds = histobag.Dataset(slides, tile_px=TILE_PX, tile_um=TILE_UM)
    first = ds.generate_feature_bags(
        _build("r18.safetensors"), "bags", progress=False, num_workers=0
    )
    (tmp_path / "bags" / "slide-1.pt").unlink()  # as if interrupted
    second = ds.generate_feature_bags(
        _build("./r18.safetensors"), "bags", progress=False, num_workers=0
    )
    assert set(second.skipped) == {"slide-0"} and set(second.done) == {"slide-1"}
    assert second.done["slide-1"] == first.done["slide-1"]


def test_configuration_equality_compares_the_sha256_not_the_path(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    original = _save_weights(tmp_path / "a" / "r18.safetensors")
    copy = tmp_path / "b" / "renamed.safetensors"
    shutil.copy(original, copy)
    assert differences(_config(_build(original)), _config(_build(copy))) == []

    other = _save_weights(tmp_path / "b" / "r18.safetensors", seed=5)
    (line,) = differences(_config(_build(original)), _config(_build(other)))
    assert line.startswith("weights: ")
    assert f"sha256 {sha256sum(original)} ({original.resolve()})" in line
    assert f"sha256 {sha256sum(other)} ({other.resolve()})" in line


def test_rebuild_extractor_from_another_directory(tmp_path, monkeypatch, slides):
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    _save_weights(tmp_path / "work" / "r18.safetensors", seed=2)
    fe = _build("r18.safetensors")
    ds = histobag.Dataset(slides, tile_px=TILE_PX, tile_um=TILE_UM)
    ds.generate_feature_bags(fe, "bags", progress=False, num_workers=0)

    monkeypatch.chdir(tmp_path / "elsewhere")
    rebuilt, normalizer = histobag.rebuild_extractor(tmp_path / "work" / "bags")
    assert normalizer is None
    assert rebuilt.weights_sha256 == fe.weights_sha256
    assert rebuilt.dump_config() == fe.dump_config()
    tiles = _tiles()
    assert torch.equal(rebuilt(tiles), fe(tiles))


def test_a_resume_with_moved_weights_records_their_new_place(tmp_path, slides):
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = _save_weights(tmp_path / "old" / "w.safetensors", seed=3)
    ds = histobag.Dataset(slides, tile_px=TILE_PX, tile_um=TILE_UM)
    bags = tmp_path / "bags"
    ds.generate_feature_bags(_build(old), bags, progress=False, num_workers=0)
    created = json.loads((bags / "bags_config.json").read_text())["provenance"]["created"]
    new = tmp_path / "new" / "w.safetensors"
    shutil.move(old, new)

    again = ds.generate_feature_bags(_build(new), bags, progress=False, num_workers=0)
    assert set(again.skipped) == {"slide-0", "slide-1"}
    config = json.loads((bags / "bags_config.json").read_text())
    assert config["extractor"]["kwargs"]["weights"] == str(new.resolve())
    assert config["provenance"]["weights_source"] == str(new.resolve())
    assert config["provenance"]["created"] == created  # still the bags' own record
    rebuilt, _ = histobag.rebuild_extractor(bags)  # no weights= needed any more
    assert rebuilt.weights_sha256 == sha256sum(new)


def test_moved_weights_say_so_and_weights_override_finds_them(tmp_path):
    weights = _save_weights(tmp_path / "r18.safetensors", seed=2)
    fe = _build(weights)
    bags = _write_config(tmp_path / "bags", fe)
    moved = tmp_path / "archive" / "r18.safetensors"
    moved.parent.mkdir()
    weights.rename(moved)

    with pytest.raises(WeightsNotFoundError) as err:
        histobag.rebuild_extractor(bags)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, WeightsError)
    message = str(err.value)
    assert str(weights.resolve()) in message and fe.weights_sha256 in message
    assert f"rebuild_extractor({str(bags)!r}, weights=" in message

    rebuilt, _ = rebuild_from_config(bags, weights=moved)
    assert rebuilt.weights_sha256 == fe.weights_sha256
    assert rebuilt.dump_config()["kwargs"]["weights"] == str(moved.resolve())
    assert differences(_config(fe), _config(rebuilt)) == []  # the same configuration
    tiles = _tiles()
    assert torch.equal(rebuilt(tiles), fe(tiles))


def test_an_override_with_other_weights_is_refused(tmp_path):
    fe = _build(_save_weights(tmp_path / "r18.safetensors", seed=2))
    bags = _write_config(tmp_path / "bags", fe)
    other = _save_weights(tmp_path / "other.safetensors", seed=3)
    with pytest.raises(WeightsError) as err:
        rebuild_from_config(bags, weights=other)
    message = str(err.value)
    assert fe.weights_sha256 in message and sha256sum(other) in message
    assert "features would not match the bags" in message
    with pytest.raises(WeightsNotFoundError, match=r"nope\.safetensors"):
        rebuild_from_config(bags, weights=tmp_path / "nope.safetensors")


def test_a_changed_file_at_the_recorded_path_is_refused(tmp_path):
    weights = _save_weights(tmp_path / "r18.safetensors", seed=2)
    fe = _build(weights)
    bags = _write_config(tmp_path / "bags", fe)
    _save_weights(weights, seed=4)  # overwritten in place
    with pytest.raises(WeightsError, match=fe.weights_sha256):
        histobag.rebuild_extractor(bags)


def test_weights_override_needs_recorded_weights(tmp_path):
    bags = _write_config(tmp_path / "bags", _build(None))
    with pytest.raises(WeightsError, match="records no weights file"):
        rebuild_from_config(bags, weights=_save_weights(tmp_path / "w.safetensors"))


def _relative(config):
    config["extractor"]["kwargs"]["weights"] = "r18.safetensors"  # as older versions wrote it


def test_an_old_relative_path_is_found_next_to_the_bags_then_in_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    (tmp_path / "bags").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    weights = _save_weights(tmp_path / "bags" / "r18.safetensors", seed=2)
    fe = _build(weights)
    bags = _write_config(tmp_path / "bags", fe, tamper=_relative)

    with pytest.warns(UserWarning, match="relative to the bags folder"):
        rebuilt, _ = histobag.rebuild_extractor(bags)
    assert rebuilt.weights_sha256 == fe.weights_sha256
    assert rebuilt.dump_config()["kwargs"]["weights"] == str(weights.resolve())

    weights.rename(tmp_path / "cwd" / "r18.safetensors")
    with pytest.warns(UserWarning, match="relative to the current directory"):
        rebuilt, _ = histobag.rebuild_extractor(bags)
    assert rebuilt.weights_sha256 == fe.weights_sha256

    os.remove(tmp_path / "cwd" / "r18.safetensors")
    with pytest.raises(WeightsNotFoundError) as err:
        histobag.rebuild_extractor(bags)
    assert str(bags / "r18.safetensors") in str(err.value)
    assert str(tmp_path / "cwd" / "r18.safetensors") in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"device": "quantum"}, "'quantum'"),
        ({"device": "cuda:99"}, "'cuda:99'"),
        ({"device": "meta"}, "'meta'"),
        ({"device": ["cpu"]}, "['cpu']"),
        ({"mixed_precision": "no"}, "'no'"),
        ({"antialias": "yes"}, "'yes'"),
        ({"norm_std": [0.2, 0.0, 0.2]}, "[0.2, 0.0, 0.2]"),
        ({"norm_mean": [0.5, 0.5]}, "[0.5, 0.5]"),
        ({"weights": 3}, "3"),
    ],
)
def test_tampered_arguments_are_config_errors(tmp_path, kwargs, shown):
    bags = _write_config(
        tmp_path / "bags", _build(None), tamper=lambda c: c["extractor"]["kwargs"].update(kwargs)
    )
    with pytest.raises(ConfigError) as err:
        histobag.rebuild_extractor(bags)
    message = str(err.value)
    assert str(bags / "bags_config.json") in message and shown in message
    assert next(iter(kwargs)) in message


def test_a_value_a_factory_refuses_is_a_config_error(tmp_path):
    """Model-specific arguments reach the pack's factory; whatever it raises is reported with
    the file (ToyNet(width=-1) fails inside torch with a RuntimeError)."""
    fe = histobag.build_feature_extractor("toy", weights="random", device="cpu")
    bags = _write_config(
        tmp_path / "bags", fe, tamper=lambda c: c["extractor"]["kwargs"].update(width=-1)
    )
    with pytest.raises(ConfigError, match=r"bags_config\.json records arguments") as err:
        histobag.rebuild_extractor(bags)
    assert '"width": -1' in str(err.value)


def test_a_bad_device_is_refused_when_building_too():
    with pytest.raises(ExtractorArgumentError, match="Unknown device 'quantum'") as err:
        histobag.build_feature_extractor("pixelnet", device="quantum")
    assert isinstance(err.value, HistobagError)
    with pytest.raises(ExtractorArgumentError, match="not available on this machine"):
        histobag.build_feature_extractor("pixelnet", device="cuda:99")
