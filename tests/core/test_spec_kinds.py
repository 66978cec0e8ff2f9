"""Spec kinds: tile encoders make feature bags; slide encoders (``tile_features``) are refused
before any slide is opened, with the tile encoder to use named."""

from __future__ import annotations

import json

import pytest

import histobag
from histobag.bags import generate as generate_module
from histobag.cli import main
from histobag.errors import ArgumentError, ExtractorArgumentError, PluginError
from histobag.extractors.base import ModelBuild
from histobag.extractors.registry import require_tile_encoder
from histobag.slide_encoding import SlideEncoderExtractor
from histobag.specs import EXTRACTOR_KINDS, SlideReaderSpec, TissueDetectorSpec, TransformSpec
from tests.core.toy_models import build_toy, registered, toy_spec


def build_toy_slide(spec, *, width: int = 8) -> ModelBuild:
    """The toy network, as a slide encoder (its class is what makes it one)."""
    return ModelBuild(module=build_toy(spec, width=width), extractor_cls=SlideEncoderExtractor)


def slide_toy(**changes):
    """A toy slide encoder consuming the toy tile encoder's features."""
    fields = dict(
        name="toy.slide",
        aliases=(),
        kind="tile_features",
        tile_encoder="toy",
        tags=(),
        factory=build_toy_slide,
    )
    fields.update(changes)
    return toy_spec(**fields)


class UnreadableDataset:
    """A dataset any access to which fails the test: proves a run stopped before reading it."""

    def __getattr__(self, name):
        raise AssertionError(f"the dataset was read ({name}) before the extractor was refused")


@pytest.fixture
def no_slide_opened(monkeypatch):
    """Fail the test if generate_feature_bags opens a slide or a TFRecord."""
    opened = []

    def spy(*args, **kwargs):
        opened.append(args)
        raise AssertionError("a slide was opened")

    for name in ("OpenWSI", "OpenTFRecord", "WSI"):
        monkeypatch.setattr(generate_module, name, spy)
    return opened


def test_kind_is_validated_and_recorded():
    assert toy_spec().kind == "tiles" and toy_spec().tile_encoder is None
    with pytest.raises(PluginError, match=r"'toy'.*kind must be one of tiles, tile_features"):
        toy_spec(kind="slides")
    with pytest.raises(PluginError, match=r"'toy'.*tile_encoder.*kind='tile_features'"):
        toy_spec(tile_encoder="other")
    spec = slide_toy()
    assert spec.to_dict()["kind"] == "tile_features"
    assert spec.to_dict()["tile_encoder"] == "toy"
    assert json.loads(json.dumps(spec.to_dict()))["kind"] in EXTRACTOR_KINDS


def test_list_extractors_filters_by_kind():
    with registered(toy_spec(), slide_toy()):
        tiles = histobag.list_extractors(kind="tiles")
        slides = histobag.list_extractors(kind="tile_features")
        everything = histobag.list_extractors()
        assert "toy" in tiles and "toy" not in slides
        assert "toy.slide" in slides and "toy.slide" not in tiles
        assert sorted(tiles + slides) == everything
        assert histobag.list_extractors(kind="tile_features", pack="<in-process>") == ["toy.slide"]
        for name in slides:
            assert histobag.extractor_info(name).kind == "tile_features"
    with pytest.raises(ArgumentError, match="kind must be one of tiles, tile_features"):
        histobag.list_extractors(kind="slide")


def test_installed_slide_encoders_name_installed_tile_encoders():
    spec = histobag.extractor_info("gigapath.slide")
    assert spec.kind == "tile_features" and spec.tile_encoder == "gigapath.tile"
    slides = histobag.list_extractors(kind="tile_features")
    assert "gigapath.slide" in slides
    for name in slides:
        spec = histobag.extractor_info(name)
        assert (
            spec.slide_input is not None and spec.tile_encoder == spec.slide_input.tile_encoders[0]
        )
        for tile_encoder in spec.slide_input.tile_encoders:
            assert histobag.extractor_info(tile_encoder).kind == "tiles", (name, tile_encoder)


def test_generate_feature_bags_refuses_gigapath_slide_before_reading(tmp_path, no_slide_opened):
    outdir = tmp_path / "bags"
    with pytest.raises(ExtractorArgumentError) as err:
        histobag.generate_feature_bags("gigapath.slide", UnreadableDataset(), outdir)
    message = str(err.value)
    assert "gigapath.slide is a slide encoder" in message
    assert "use gigapath.tile" in message
    assert not no_slide_opened and not outdir.exists()
    # the same through an alias
    with pytest.raises(ExtractorArgumentError, match=r"use gigapath\.tile"):
        histobag.generate_feature_bags("gigapath-slide", UnreadableDataset(), outdir)


def test_a_built_slide_encoder_is_refused_too(tmp_path, no_slide_opened):
    with registered(toy_spec(), slide_toy()):
        built = histobag.build_feature_extractor("toy.slide", weights="random", device="cpu")
        with pytest.raises(
            ExtractorArgumentError, match=r"toy\.slide is a slide encoder.*use toy,"
        ):
            histobag.generate_feature_bags(built, UnreadableDataset(), tmp_path / "bags")
        with pytest.raises(ExtractorArgumentError, match="use toy,"):
            histobag.generate_feature_bags("toy.slide", UnreadableDataset(), tmp_path / "bags")
        tile = histobag.build_feature_extractor("toy", weights="random", device="cpu")
        require_tile_encoder(tile)  # tile encoders pass, by name and built
        require_tile_encoder("toy")
    assert not no_slide_opened


def test_a_slide_encoder_without_a_named_tile_encoder_points_at_the_list():
    with registered(slide_toy(tile_encoder=None)):
        with pytest.raises(ExtractorArgumentError, match="histobag list --kind tiles"):
            require_tile_encoder("toy.slide")


def test_cli_extract_refuses_a_slide_encoder_before_the_dataset(tmp_path, monkeypatch, capsys):
    import histobag.dataset

    def no_dataset(*args, **kwargs):
        raise AssertionError("the dataset was read before the extractor was refused")

    monkeypatch.setattr(histobag.dataset, "Dataset", no_dataset)
    (tmp_path / "slides").mkdir()
    argv = ["extract", "--extractor", "gigapath.slide", "--slides", str(tmp_path / "slides")]
    argv += ["--outdir", str(tmp_path / "bags"), "--tile-px", "256", "--tile-um", "128"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "gigapath.slide is a slide encoder" in err and "use gigapath.tile" in err


def test_cli_list_shows_and_filters_kinds(capsys):
    assert main(["list", "--kind", "tile_features"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    slides = histobag.list_extractors(kind="tile_features")
    assert [row.split()[:2] for row in rows] == [[name, "tile_features"] for name in slides]

    assert main(["list", "--kind", "tiles"]) == 0
    names = [row.split()[0] for row in capsys.readouterr().out.splitlines()[2:]]
    assert names == histobag.list_extractors(kind="tiles")
    assert "gigapath.slide" not in names and "gigapath.tile" in names

    assert main(["list", "--json", "--kind", "tile_features"]) == 0
    specs = json.loads(capsys.readouterr().out)
    assert [(s["name"], s["kind"]) for s in specs] == [(n, "tile_features") for n in slides]
    gigapath = next(s for s in specs if s["name"] == "gigapath.slide")
    assert gigapath["tile_encoder"] == "gigapath.tile"
    assert gigapath["slide_input"]["tile_px"] == 256
    with pytest.raises(SystemExit):
        main(["list", "--kind", "slides"])


def test_cli_info_shows_the_kind(capsys):
    assert main(["info", "gigapath.slide"]) == 0
    out = capsys.readouterr().out
    kind = next(line for line in out.splitlines() if line.startswith("kind"))
    assert "tile_features" in kind and "gigapath.tile features of 256 px tiles at 20x" in kind
    assert "needs:" in out and "preprocessing" not in out  # no image input to preprocess
    assert main(["info", "gigapath.tile"]) == 0
    kind = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("kind"))
    assert kind.split()[1] == "tiles"


@pytest.mark.parametrize(
    ("make", "owner"),
    [
        (lambda factory: TransformSpec("blur", factory), "Transform 'blur'"),
        (lambda factory: SlideReaderSpec("czi", factory), "Slide reader 'czi'"),
        (lambda factory: TissueDetectorSpec("mask", factory), "Tissue detector 'mask'"),
    ],
)
@pytest.mark.parametrize("factory", ["pkg.mod", "pkg.mod:", ":build", "", None, print])
def test_every_plugin_spec_refuses_a_factory_that_is_not_module_attr(make, owner, factory):
    with pytest.raises(PluginError, match=rf"^{owner}: factory must be a 'module:attr' string"):
        make(factory)
    assert make("pkg.mod:build").factory == "pkg.mod:build"
