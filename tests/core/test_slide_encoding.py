"""Slide encoders in core: bags checked against what the model was trained on, one resumable
pipeline for every slide encoder, mean pooling, ``extractor(wsi)``, zero-shot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import histobag
from histobag.bags.read import read_bag
from histobag.errors import (
    ArgumentError,
    ConfigError,
    ExtractorArgumentError,
    IncompatibleBagsError,
    PluginError,
)
from histobag.extractors.base import ModelBuild
from histobag.slide import WSI
from histobag.slide_encoding import (
    SlideEncoderExtractor,
    check_bags,
    generate_slide_embeddings,
    read_table,
    zero_shot,
)
from histobag.slide_encoding.pipeline import EMBEDDINGS_CONFIG, EMBEDDINGS_REPORT
from histobag.slide_encoding.plan import plan_slide_run
from histobag.specs import ExtractorSpec, SlideInput
from tests.core.bag_helpers import TILE_PX, TILE_UM, make_slides
from tests.core.slide_encoder_toys import OUT_FEATURES, TOY_SPECS, TOYSLIDE
from tests.core.toy_models import registered


@pytest.fixture(scope="module", autouse=True)
def toys():
    with registered(*TOY_SPECS):
        yield


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    return make_slides(tmp_path_factory.mktemp("slides"), n=3)


def _bags(slides: Path, outdir: Path, name: str = "pixelnet", **kwargs) -> Path:
    extractor = histobag.build_feature_extractor(name, device="cpu", mixed_precision=False)
    geometry = {"tile_px": TILE_PX, "tile_um": TILE_UM, **kwargs.pop("geometry", {})}
    dataset = histobag.Dataset(slides, **geometry)
    report = dataset.generate_feature_bags(
        extractor, outdir, batch_size=16, num_workers=0, progress=False, **kwargs
    )
    assert report.ok and len(report.done) == 3
    return outdir


@pytest.fixture(scope="module")
def pixel_bags(slides, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bags")
    return {w: _bags(slides, root / w, writer=w) for w in ("pt", "h5", "safetensors")}


def _toy() -> SlideEncoderExtractor:
    return histobag.build_feature_extractor("toyslide", device="cpu", mixed_precision=False)


# ------------------------------------------------------------------------------------------
# mean:<tile encoder>
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["pt", "h5", "safetensors"])
def test_mean_pooling_equals_the_numpy_mean_of_each_bag(pixel_bags, tmp_path, writer):
    mean = histobag.build_feature_extractor("mean:pixelnet")
    assert mean.tag == "mean:pixelnet" and mean.num_features == 12
    report = mean.generate_and_save(pixel_bags[writer], tmp_path)
    assert report.ok and sorted(report.done) == ["slide-0", "slide-1", "slide-2"]
    slides, table = read_table(report.table)
    assert slides == sorted(report.done)
    for i, slide in enumerate(slides):
        features, _, _ = read_bag(pixel_bags[writer], slide)
        expected = features.mean(axis=0, dtype=np.float64).astype(np.float32)
        saved = torch.load(tmp_path / f"{slide}.pt", weights_only=True).numpy()
        assert np.array_equal(saved, expected) and np.array_equal(table[i], expected)
    config = json.loads((tmp_path / EMBEDDINGS_CONFIG).read_text())
    assert config["slide_input"]["tile_encoders"] == ["pixelnet"]
    assert config["bags_check"] == {
        "mismatches": [],
        "forced": False,
        "found": {"tile_encoder": "pixelnet", "tile_px": TILE_PX, "tile_um": TILE_UM},
    }


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    dim=st.integers(1, 40),
    scale=st.floats(1e-3, 1e4),
    seed=st.integers(0, 2**16),
)
def test_mean_pooling_is_the_mean_for_any_bag(n, dim, scale, seed):
    rng = np.random.default_rng(seed)
    features = (rng.standard_normal((n, dim)) * scale).astype(np.float32)
    coords = rng.integers(0, 10_000, (n, 2))
    mean = histobag.build_feature_extractor("mean:pixelnet")
    mean.extra["in_features"] = dim
    got = mean(features, coords).numpy()
    assert np.array_equal(got, features.mean(axis=0, dtype=np.float64).astype(np.float32))


def test_mean_pooling_names_carry_the_tile_encoders_licence():
    info = histobag.extractor_info("mean:pixelnet")
    assert info.kind == "tile_features" and info.license == "MIT"
    assert info.slide_input.tile_encoders == ("pixelnet",)
    with pytest.raises(histobag.errors.UnknownExtractorError):
        histobag.extractor_info("mean:nothing-like-this")
    with pytest.raises(PluginError, match="slide encoder"):
        histobag.extractor_info("mean:toyslide")


# ------------------------------------------------------------------------------------------
# Bags that do not fit are refused
# ------------------------------------------------------------------------------------------


def test_bags_of_another_tile_encoder_are_refused_naming_both(slides, tmp_path):
    other = _bags(slides, tmp_path / "other", name="othernet")
    toy = _toy()
    with pytest.raises(IncompatibleBagsError) as refused:
        toy.generate_and_save(other, tmp_path / "emb")
    message = str(refused.value)
    assert "othernet features" in message and "needs pixelnet features" in message
    assert "--force" in message and not (tmp_path / "emb").exists()
    report = toy.generate_and_save(other, tmp_path / "emb", force=True)  # the expert's way
    assert report.ok and len(report.done) == 3
    config = json.loads((tmp_path / "emb" / EMBEDDINGS_CONFIG).read_text())
    assert config["bags_check"]["forced"] is True
    assert "othernet" in config["bags_check"]["mismatches"][0]


@pytest.mark.parametrize(
    ("geometry", "found"),
    [
        ({"tile_um": 2 * TILE_UM}, "10x"),
        ({"tile_px": 2 * TILE_PX, "tile_um": 2 * TILE_UM}, "32 px"),
    ],
)
def test_bags_at_another_geometry_are_refused(slides, tmp_path, geometry, found):
    bags = _bags(slides, tmp_path / "bags", geometry=geometry)
    with pytest.raises(IncompatibleBagsError, match=found) as refused:
        _toy().generate_and_save(bags, tmp_path / "emb")
    assert "20x" in str(refused.value)


def test_magnification_string_and_microns_are_the_same():
    needs = SlideInput(("pixelnet",), tile_px=512, magnification=20)
    config = {"extractor": {"extractor": "pixelnet"}, "tile_px": 512}
    for tile_um in ("20x", 256, 256.0 * 1.05):
        assert check_bags("x", needs, {**config, "tile_um": tile_um}).mismatches == ()
    for tile_um in ("40x", "10x", 512, 256 * 1.2):
        with pytest.raises(IncompatibleBagsError, match="needs 20x"):
            check_bags("x", needs, {**config, "tile_um": tile_um})


def _slide_encoders() -> list[str]:
    return [
        name
        for name in histobag.list_extractors(kind="tile_features")
        if histobag.extractor_info(name).slide_input is not None
        and histobag.extractor_info(name).slide_input.tile_px is not None
    ]


@pytest.mark.parametrize("name", _slide_encoders())
def test_every_slide_encoder_refuses_bags_it_was_not_trained_on(name):
    """TITAN and every other registered slide encoder: another tile encoder's bags are refused
    naming both encoders; the right encoder at half the magnification is refused too."""
    needs = histobag.extractor_info(name).slide_input
    right = {
        "extractor": {"extractor": needs.tile_encoders[0]},
        "tile_px": needs.tile_px,
        "tile_um": f"{needs.magnification:g}x",
    }
    assert check_bags(name, needs, right).mismatches == ()
    with pytest.raises(IncompatibleBagsError) as refused:
        check_bags(name, needs, {**right, "extractor": {"extractor": "pixelnet"}})
    assert "pixelnet features" in str(refused.value)
    assert all(encoder in str(refused.value) for encoder in needs.tile_encoders)
    half = {**right, "tile_um": f"{needs.magnification / 2:g}x"}
    with pytest.raises(IncompatibleBagsError, match=f"needs {needs.magnification:g}x"):
        check_bags(name, needs, half)


def test_a_folder_without_bags_config_needs_writer_and_force(pixel_bags, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in pixel_bags["h5"].glob("slide-*.h5"):
        (bare / path.name).write_bytes(path.read_bytes())
    with pytest.raises(ConfigError, match=r"bags_config\.json"):
        _toy().generate_and_save(bare, tmp_path / "emb")
    report = _toy().generate_and_save(bare, tmp_path / "emb", writer="h5", force=True)
    assert report.ok and len(report.done) == 3 and report.check.forced


# ------------------------------------------------------------------------------------------
# The pipeline: resume, bad bags, other configurations
# ------------------------------------------------------------------------------------------


def test_resume_skips_finished_slides_and_a_bad_bag_fails_alone(pixel_bags, tmp_path):
    bags = tmp_path / "bags"
    bags.mkdir()
    for path in pixel_bags["pt"].iterdir():
        if path.is_file():
            (bags / path.name).write_bytes(path.read_bytes())
    toy, out = _toy(), tmp_path / "emb"
    first = toy.generate_and_save(bags, out)
    reference = {s: torch.load(out / f"{s}.pt", weights_only=True) for s in first.done}
    (out / "slide-1.pt").unlink()  # as if killed before this slide was written
    (out / ".histobag-tmp-slide-1.pt").write_bytes(b"half")  # what a kill leaves
    (bags / "slide-2.pt").write_bytes(b"not a tensor")
    (out / "slide-2.pt").unlink()
    second = toy.generate_and_save(bags, out)
    assert second.skipped == ["slide-0"] and second.done == ["slide-1"]
    assert list(second.failed) == ["slide-2"] and not second.ok
    assert torch.equal(torch.load(out / "slide-1.pt", weights_only=True), reference["slide-1"])
    assert not list(out.glob(".histobag-tmp-*"))
    slides, table = read_table(second.table)
    assert slides == ["slide-0", "slide-1"] and table.shape == (2, OUT_FEATURES)
    saved_report = json.loads((out / EMBEDDINGS_REPORT).read_text())
    assert saved_report["failed"].keys() == {"slide-2"}


def test_another_configuration_is_refused_unless_overwrite(pixel_bags, tmp_path):
    out = tmp_path / "emb"
    _toy().generate_and_save(pixel_bags["pt"], out)
    mean = histobag.build_feature_extractor("mean:pixelnet")
    with pytest.raises(ConfigError, match="another configuration"):
        mean.generate_and_save(pixel_bags["pt"], out)
    report = mean.generate_and_save(pixel_bags["pt"], out, overwrite=True)
    assert len(report.done) == 3 and report.table.name == "slide_embeddings.h5"


def test_parquet_table(pixel_bags, tmp_path):
    report = _toy().generate_and_save(pixel_bags["pt"], tmp_path, table="parquet")
    slides, table = read_table(report.table)
    assert report.table.suffix == ".parquet" and slides == sorted(report.done)
    for i, slide in enumerate(slides):
        assert np.array_equal(table[i], torch.load(tmp_path / f"{slide}.pt").numpy())
    with pytest.raises(ArgumentError, match="table"):
        generate_slide_embeddings(_toy(), pixel_bags["pt"], tmp_path, table="csv")


# ------------------------------------------------------------------------------------------
# Features, bags and slides in
# ------------------------------------------------------------------------------------------


def test_every_way_in_gives_the_same_embedding(slides, pixel_bags):
    toy = _toy()
    wsi = WSI(slides / "slide-0.svs", TILE_PX, TILE_UM)
    toy.use_tile_extractor(
        histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)
    )
    direct = toy(wsi, batch_size=16, num_workers=0)
    assert direct.shape == (OUT_FEATURES,) and direct.dtype == torch.float32
    for writer, bags in pixel_bags.items():
        features, coords, convention = read_bag(bags, "slide-0")
        torch.testing.assert_close(toy.embed_bag(features, coords, convention), direct)
        if convention == "top_left":
            torch.testing.assert_close(toy(features, coords), direct)
            moved = toy(features, coords + np.array([0, 5 * 16]))  # same grid, shifted
            torch.testing.assert_close(moved, direct)
            flipped = toy(features, coords[:, ::-1].copy())  # positions matter
            assert not torch.allclose(flipped, direct, atol=1e-4), writer


def test_a_slide_at_the_wrong_geometry_is_refused(slides):
    toy = _toy()
    toy.use_tile_extractor(histobag.build_feature_extractor("pixelnet", device="cpu"))
    wsi = WSI(slides / "slide-0.svs", TILE_PX, 2 * TILE_UM)
    with pytest.raises(IncompatibleBagsError, match=r"tile_um='20x'"):
        toy(wsi, num_workers=0)
    assert toy(wsi, num_workers=0, force=True).shape == (OUT_FEATURES,)
    with pytest.raises(IncompatibleBagsError, match="othernet"):
        toy.use_tile_extractor(histobag.build_feature_extractor("othernet", device="cpu"))


def test_misuse_gives_clear_errors():
    toy = _toy()
    with pytest.raises(ExtractorArgumentError, match="not from images"):
        toy(np.zeros((2, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(ExtractorArgumentError, match=r"\(N, 12\)"):
        toy(np.zeros((3, 11), dtype=np.float32), np.zeros((3, 2)))
    with pytest.raises(ExtractorArgumentError, match="no tiles"):
        toy(np.zeros((0, 12), dtype=np.float32), np.zeros((0, 2)))
    with pytest.raises(ExtractorArgumentError, match=r"\(N, 2\)"):
        toy(np.zeros((3, 12), dtype=np.float32), np.zeros((3, 3)))


def test_a_slide_encoder_factory_must_give_a_slide_encoder_class():
    bad = TOYSLIDE.replace(
        name="toyslide-bad",
        factory=lambda spec: ModelBuild(module=torch.nn.Identity(), num_features=6),
    )
    with registered(bad), pytest.raises(PluginError, match="SlideEncoderExtractor"):
        histobag.build_feature_extractor("toyslide-bad")


def test_slide_input_belongs_to_slide_encoders():
    with pytest.raises(PluginError, match="tile_features"):
        ExtractorSpec(name="x", factory="a:b", license="MIT", slide_input=SlideInput(("pixelnet",)))
    with pytest.raises(PluginError, match="at least one"):
        SlideInput(())
    needs = SlideInput(("conch-v1.5",), tile_px=512, magnification=20)
    assert needs.tile_um == 256.0
    assert needs.describe() == "conch-v1.5 features of 512 px tiles at 20x"


# ------------------------------------------------------------------------------------------
# Planning `histobag extract --slide-encoder`
# ------------------------------------------------------------------------------------------


def test_plan_takes_the_models_geometry_and_refuses_others(tmp_path):
    plan = plan_slide_run("toyslide", tmp_path)
    assert (plan.tile_encoder, plan.tile_px, plan.tile_um) == ("pixelnet", TILE_PX, "20x")
    assert plan.bags_dir == tmp_path / "bags" / "pixelnet"
    assert plan.embeddings_dir == tmp_path / "slide_embeddings" / "toyslide"
    with pytest.raises(IncompatibleBagsError, match="32 px"):
        plan_slide_run("toyslide", tmp_path, tile_px=32)
    with pytest.raises(IncompatibleBagsError, match="othernet"):
        plan_slide_run("toyslide", tmp_path, tile_encoder="othernet")
    forced = plan_slide_run("toyslide", tmp_path, tile_um="10x", force=True)
    assert forced.tile_um == "10x" and "10x" in forced.forced[0]
    with pytest.raises(ArgumentError, match="--tile-px"):
        plan_slide_run("mean:pixelnet", tmp_path)
    mean = plan_slide_run("mean:pixelnet", tmp_path, tile_px=64, tile_um=32)
    assert mean.embeddings_dir.name == "mean_pixelnet"
    with pytest.raises(ExtractorArgumentError, match="--extractor"):
        plan_slide_run("pixelnet", tmp_path)


# ------------------------------------------------------------------------------------------
# Zero-shot
# ------------------------------------------------------------------------------------------


class _TextToy:
    """A slide encoder stand-in with a text tower: prompts embed by their first letter."""

    tag = "text-toy"
    logit_scale = 10.0

    def text_features(self, prompts):
        rows = [torch.eye(3)[ord(p[0]) - ord("a")] + 0.1 for p in prompts]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    def slide_to_text_space(self, embeddings):
        return torch.nn.functional.normalize(embeddings[:, :3], dim=-1)


def test_zero_shot_scores_slides_against_class_prompts():
    slides = np.array([[0, 0, 1, 5], [1, 0, 0, 5]], dtype=np.float32)
    prompts = {"alpha": ["a tumour", "another"], "beta": ["b"], "gamma": ["c", "cc"]}
    result = zero_shot(_TextToy(), slides, prompts)
    assert result["predicted"].tolist() == ["gamma", "alpha"]
    np.testing.assert_allclose(result["probabilities"].sum(axis=1), 1.0, rtol=1e-6)
    toy = _TextToy()
    image = toy.slide_to_text_space(torch.from_numpy(slides))
    text = torch.nn.functional.normalize(toy.text_features(["a"]).mean(0), dim=-1)
    np.testing.assert_allclose(result["logits"][:, 0], 10.0 * (image @ text).numpy(), rtol=1e-5)
    with pytest.raises(ExtractorArgumentError, match="text tower"):
        zero_shot(_toy(), slides, prompts)
    with pytest.raises(ExtractorArgumentError, match="non-empty list"):
        zero_shot(toy, slides, {"alpha": "a tumour"})


class _OfficialRuleToy(_TextToy):
    """A model with its own zero-shot rule (as PRISM's): it is used instead of the mean."""

    def class_probabilities(self, slide_embeddings, class_prompts):
        self.seen = class_prompts
        return torch.tensor([[0.25, 0.75]]).expand(len(slide_embeddings), 2)


def test_zero_shot_uses_a_models_own_rule():
    toy = _OfficialRuleToy()
    result = zero_shot(toy, np.ones((3, 4), np.float32), {"neg": ["a", "b"], "pos": ["c"]})
    assert toy.seen == [["a", "b"], ["c"]]
    assert result["predicted"].tolist() == ["pos"] * 3
    np.testing.assert_allclose(result["probabilities"], [[0.25, 0.75]] * 3)
    np.testing.assert_allclose(np.exp(result["logits"]), result["probabilities"], rtol=1e-6)
