"""Tile transforms (the ``tile_transform`` kind of ``histobag_transforms``): applied by the engine
after the stain normalizer, recorded in ``bags_config.json``, rebuilt from it.

The transforms come from the installed example pack (``tests/plugins/histobag-example``:
``example-invert``, ``example-rot90`` and ``example-crop``); expected features are computed
independently, from tiles read with ``WSI.read_tiles`` and transformed with numpy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import histobag
from histobag.bags.config import build_tile_transforms, read_config
from histobag.bags.read import read_bag
from histobag.cli import main as cli_main
from histobag.errors import (
    ArgumentError,
    ConfigError,
    EmptyRunWarning,
    HistobagError,
    PluginError,
    TileTransformError,
)
from histobag.hookspecs import hookimpl
from histobag.io.images import encode_image
from histobag.io.tfrecord import TFRecordWriter
from histobag.norm import autoselect
from histobag.plugins import transform_specs
from histobag.slide import WSI
from histobag.specs import TRANSFORM_KINDS, TransformSpec
from histobag.tile_transforms import resolve_tile_transforms
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered

INVERT_AND_ROTATE = ["example-invert", {"name": "example-rot90", "kwargs": {"k": 3}}]
CROP = {"name": "example-crop", "kwargs": {"height": 8, "width": 12, "top": 2, "left": 3}}
ROT90 = {"name": "example-rot90", "kwargs": {"k": 1}}


# ------------------------------------------------------------------------------------------
# Independent reference: numpy on (n, H, W, 3) tiles
# ------------------------------------------------------------------------------------------


def np_invert(tiles: np.ndarray, channels: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    out = tiles.copy()
    for c in channels:
        out[..., c] = 255 - out[..., c]
    return out


def np_rot90(tiles: np.ndarray, k: int = 1) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(tiles, k, axes=(1, 2)))


def np_apply(request: Any, tiles: np.ndarray) -> np.ndarray:
    """The example pack's transforms, written again with numpy, applied in order."""
    entries = request if isinstance(request, list) else [request]
    for entry in entries:
        name, kwargs = (entry, {}) if isinstance(entry, str) else (entry["name"], entry["kwargs"])
        if name == "example-invert":
            tiles = np_invert(tiles, tuple(kwargs.get("channels", (0, 1, 2))))
        elif name == "example-rot90":
            tiles = np_rot90(tiles, kwargs.get("k", 1))
        else:
            top, left = kwargs.get("top", 0), kwargs.get("left", 0)
            window = tiles[:, top : top + kwargs["height"], left : left + kwargs["width"]]
            tiles = np.ascontiguousarray(window)
    return tiles


@pytest.fixture(scope="module")
def extractor():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    return make_slides(tmp_path_factory.mktemp("tile-transform-slides"), n=2)


@pytest.fixture
def dataset(slides):
    return histobag.Dataset(slides, None, TILE_PX, TILE_UM)


def kept_tiles(slide: Path) -> np.ndarray:
    """uint8 (n, px, px, 3): the tiles of ``slide`` the filters keep, in bag order."""
    wsi = WSI(slide, TILE_PX, TILE_UM)
    tiles, keep = wsi.read_tiles(range(len(wsi)), return_mask=True)
    return tiles[keep]


def features_of(extractor, tiles: np.ndarray) -> np.ndarray:
    """The extractor's batch call on (n, H, W, 3) tiles, as a bag would hold them."""
    return extractor.forward_batch(torch.from_numpy(tiles).permute(0, 3, 1, 2)).numpy()


def bags(extractor, dataset, outdir: Path, **kwargs: Any):
    return histobag.generate_feature_bags(
        extractor, dataset, outdir, num_workers=0, progress=False, **kwargs
    )


# ------------------------------------------------------------------------------------------
# What the bags hold
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        "example-invert",
        {"name": "example-invert", "kwargs": {"channels": [1]}},
        {"name": "example-rot90", "kwargs": {"k": 1}},
        INVERT_AND_ROTATE,
        CROP,
        [CROP, ROT90, "example-invert"],
        [ROT90, CROP],
    ],
    ids=[
        "invert",
        "invert-green",
        "rot90",
        "invert-rot270",
        "crop",
        "crop-rot90-invert",
        "rot90-crop",
    ],
)
def test_bags_hold_features_of_independently_transformed_tiles(
    extractor, dataset, slides, tmp_path, request_
):
    report = bags(extractor, dataset, tmp_path / "bags", tile_transforms=request_, batch_size=7)
    assert not report.failed and set(report.done) == {"slide-0", "slide-1"}
    for slide in ("slide-0", "slide-1"):
        tiles = kept_tiles(slides / f"{slide}.svs")
        expected = features_of(extractor, np_apply(request_, tiles))
        features, _, _ = read_bag(tmp_path / "bags", slide)
        np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
        # Not vacuous: the transform changes what the model sees.
        assert not np.allclose(features, features_of(extractor, tiles), atol=1e-3)


def test_tile_transforms_run_in_order(extractor, dataset, tmp_path):
    """Cropping then rotating differs from rotating then cropping; each bag is its order's."""
    first = bags(extractor, dataset, tmp_path / "a", tile_transforms=[CROP, ROT90])
    second = bags(extractor, dataset, tmp_path / "b", tile_transforms=[ROT90, CROP])
    assert not first.failed and not second.failed
    a, b = read_bag(tmp_path / "a", "slide-0")[0], read_bag(tmp_path / "b", "slide-0")[0]
    assert not np.allclose(a, b, atol=1e-3)


def test_tile_transforms_run_after_the_stain_normalizer(extractor, dataset, slides, tmp_path):
    report = bags(
        extractor,
        dataset,
        tmp_path / "bags",
        normalizer="reinhard_fast",
        tile_transforms="example-invert",
    )
    assert not report.failed
    tiles = torch.from_numpy(kept_tiles(slides / "slide-0.svs")).permute(0, 3, 1, 2)
    normalised = autoselect("reinhard_fast").transform(tiles).permute(0, 2, 3, 1).numpy()
    expected = features_of(extractor, np_invert(normalised))
    np.testing.assert_allclose(
        read_bag(tmp_path / "bags", "slide-0")[0], expected, rtol=1e-5, atol=1e-5
    )


def test_batch_sizes_1_3_8_give_equal_bags(extractor, dataset, tmp_path):
    results = {}
    for batch_size in (1, 3, 8):
        outdir = tmp_path / f"bs{batch_size}"
        report = bags(
            extractor,
            dataset,
            outdir,
            tile_transforms=[CROP, *INVERT_AND_ROTATE],
            batch_size=batch_size,
            max_tiles=50,  # batch size 1 is slow; 50 tiles, evenly spaced, tell the same
        )
        assert not report.failed
        results[batch_size] = {s: read_bag(outdir, s) for s in ("slide-0", "slide-1")}
    for batch_size in (3, 8):
        for slide, (features, coords, _) in results[batch_size].items():
            np.testing.assert_allclose(features, results[1][slide][0], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(coords, results[1][slide][1])


def test_dataset_generate_feature_bags_forwards_tile_transforms(extractor, dataset, tmp_path):
    dataset.generate_feature_bags(
        extractor, tmp_path / "bags", tile_transforms="example-invert", progress=False
    )
    assert read_config(tmp_path / "bags")["tile_transforms"] == [
        {"name": "example-invert", "kwargs": {}}
    ]


# ------------------------------------------------------------------------------------------
# bags_config.json: recorded, in the fingerprint, rebuilt
# ------------------------------------------------------------------------------------------


def test_the_config_records_the_transforms_and_their_pack(extractor, dataset, tmp_path):
    bags(extractor, dataset, tmp_path / "bags", tile_transforms=INVERT_AND_ROTATE)
    config = read_config(tmp_path / "bags")
    assert config["tile_transforms"] == [
        {"name": "example-invert", "kwargs": {}},
        {"name": "example-rot90", "kwargs": {"k": 3}},
    ]
    assert config["provenance"]["versions"]["histobag-example"] == metadata.version(
        "histobag-example"
    )


def test_a_run_without_transforms_records_none(extractor, dataset, tmp_path):
    bags(extractor, dataset, tmp_path / "bags")
    assert read_config(tmp_path / "bags")["tile_transforms"] == []
    assert build_tile_transforms(tmp_path / "bags") == []


@pytest.mark.parametrize(
    "other",
    [
        None,
        "example-invert",
        ["example-invert", {"name": "example-rot90", "kwargs": {"k": 1}}],
        [{"name": "example-rot90", "kwargs": {"k": 3}}, "example-invert"],
    ],
    ids=["none", "fewer", "other-kwargs", "other-order"],
)
def test_a_resume_with_other_transforms_is_refused(extractor, dataset, tmp_path, other):
    outdir = tmp_path / "bags"
    bags(extractor, dataset, outdir, tile_transforms=INVERT_AND_ROTATE)
    with pytest.raises(ConfigError, match=r"different configuration:\n  tile_transforms: "):
        bags(extractor, dataset, outdir, tile_transforms=other)
    report = bags(extractor, dataset, outdir, tile_transforms=INVERT_AND_ROTATE)
    assert set(report.skipped) == {"slide-0", "slide-1"} and not report.done


def test_transforms_added_to_a_folder_made_without_them_are_refused(extractor, dataset, tmp_path):
    outdir = tmp_path / "bags"
    bags(extractor, dataset, outdir)
    with pytest.raises(ConfigError, match=r"tile_transforms: \[\] -> \[\{'name': 'example-invert'"):
        bags(extractor, dataset, outdir, tile_transforms="example-invert")


def test_an_old_config_without_the_key_means_no_transforms(extractor, dataset, tmp_path):
    outdir = tmp_path / "bags"
    bags(extractor, dataset, outdir)
    file = outdir / "bags_config.json"
    config = json.loads(file.read_text())
    del config["tile_transforms"]  # as written before tile transforms were applied
    file.write_text(json.dumps(config))
    assert build_tile_transforms(outdir) == []
    report = bags(extractor, dataset, outdir)
    assert set(report.skipped) == {"slide-0", "slide-1"}
    with pytest.raises(ConfigError, match="tile_transforms"):
        bags(extractor, dataset, outdir, tile_transforms="example-invert")


def test_build_tile_transforms_rebuilds_what_made_the_bags(extractor, dataset, slides, tmp_path):
    outdir = tmp_path / "bags"
    bags(extractor, dataset, outdir, tile_transforms=INVERT_AND_ROTATE)
    rebuilt_extractor, normalizer = histobag.rebuild_extractor(outdir)  # the shape it had
    assert normalizer is None
    tiles = kept_tiles(slides / "slide-1.svs")
    for source in (outdir, outdir / "bags_config.json", read_config(outdir)):
        transforms = build_tile_transforms(source)
        assert [t.to_dict() for t in transforms] == read_config(outdir)["tile_transforms"]
        batch = torch.from_numpy(tiles).permute(0, 3, 1, 2)
        for transform in transforms:
            batch = transform(batch)
        np.testing.assert_array_equal(
            batch.permute(0, 2, 3, 1).numpy(), np_apply(INVERT_AND_ROTATE, tiles)
        )
        features = rebuilt_extractor.forward_batch(batch).numpy()
        np.testing.assert_allclose(features, read_bag(outdir, "slide-1")[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ([{"name": "example-gone", "kwargs": {}}], "unknown tile transform 'example-gone'"),
        ([{"name": "example-rot90", "kwargs": {"turns": 2}}], "refuses the keyword arguments"),
        ([{"name": "example-rot90", "kwargs": {"k": 1}, "code": "x"}], "must be a list of"),
        ({"name": "example-rot90"}, "must be a list of"),
    ],
    ids=["unregistered", "bad-kwargs", "extra-key", "not-a-list"],
)
def test_a_tampered_or_unbuildable_record_is_a_config_error(
    extractor, dataset, tmp_path, record, match
):
    outdir = tmp_path / "bags"
    bags(extractor, dataset, outdir)
    file = outdir / "bags_config.json"
    config = json.loads(file.read_text())
    config["tile_transforms"] = record
    file.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=match):
        build_tile_transforms(outdir)


# ------------------------------------------------------------------------------------------
# A transform that breaks its contract fails that slide, naming it
# ------------------------------------------------------------------------------------------

#: Ways to break the contract: (uint8 (B, 3, H, W) -> bad output, what the message says).
BAD_OUTPUTS: dict[str, tuple[Callable[[torch.Tensor], Any], str]] = {
    "float": (lambda t: t.float(), r"a float32 tensor \(\d+, 3, 16, 16\)"),
    "3-D": (lambda t: t[0], r"a uint8 tensor \(3, 16, 16\)"),
    "channels": (lambda t: t[:, :1], r"a uint8 tensor \(\d+, 1, 16, 16\)"),
    "batch": (lambda t: torch.cat([t, t[:1]]), r"a uint8 tensor \(\d+, 3, 16, 16\).* B = \d+ "),
    "device": (lambda t: t.to("meta"), r"on meta"),
    "numpy": (lambda t: t.numpy(), "a ndarray, not a tensor"),
    "raises": (lambda t: 1 / 0, "raised ZeroDivisionError"),
}


def build_bad(problem: str, calls: int = 1) -> Callable[[torch.Tensor], Any]:
    """A tile transform that breaks its contract on its first ``calls`` calls, then is the
    identity. The engine skips the batches of a slide its transform failed, so with the
    default one bad call only the first slide fails."""
    bad, _ = BAD_OUTPUTS[problem]
    count = {"n": 0}

    def transform(tiles: torch.Tensor) -> Any:
        count["n"] += 1
        return bad(tiles) if count["n"] <= calls else tiles

    return transform


class BadTransforms:
    """In-process plugin registering ``example-bad``."""

    @hookimpl
    def histobag_transforms(self) -> list[TransformSpec]:
        return [
            TransformSpec(
                "example-bad", "tests.core.test_tile_transforms:build_bad", kind="tile_transform"
            )
        ]


@pytest.fixture
def bad_transform():
    plugin = BadTransforms()
    histobag.register_plugin(plugin)
    yield
    histobag.unregister_plugin(plugin)


@pytest.mark.parametrize("problem", sorted(BAD_OUTPUTS))
def test_a_transform_breaking_its_contract_fails_that_slide(
    extractor, dataset, slides, tmp_path, bad_transform, problem
):
    outdir = tmp_path / "bags"
    report = bags(
        extractor,
        dataset,
        outdir,
        tile_transforms={"name": "example-bad", "kwargs": {"problem": problem}},
        batch_size=64,
    )
    assert set(report.failed) == {"slide-0"}
    assert report.failed["slide-0"].startswith("tile transform 'example-bad' (<in-process>) ")
    assert re.search(BAD_OUTPUTS[problem][1], report.failed["slide-0"]), report.failed["slide-0"]
    assert set(report.done) == {"slide-1"}
    assert not list(outdir.glob("slide-0*")), "a failed slide has no bag"
    features, _, _ = read_bag(outdir, "slide-1")
    np.testing.assert_allclose(
        features, features_of(extractor, kept_tiles(slides / "slide-1.svs")), atol=1e-5
    )


def test_a_transform_failing_every_call_fails_every_slide(
    extractor, dataset, tmp_path, bad_transform
):
    with pytest.warns(EmptyRunWarning):
        report = bags(
            extractor,
            dataset,
            tmp_path / "bags",
            tile_transforms={"name": "example-bad", "kwargs": {"problem": "float", "calls": 10**6}},
            batch_size=3,
        )
    assert set(report.failed) == {"slide-0", "slide-1"} and not report.done
    for reason in report.failed.values():
        assert reason.startswith("tile transform 'example-bad' (<in-process>) returned a float32")


def test_extractor_on_a_wsi_names_the_failing_transform(extractor, slides, bad_transform):
    wsi = WSI(slides / "slide-0.svs", TILE_PX, TILE_UM)
    bad = {"name": "example-bad", "kwargs": {"problem": "float"}}
    with pytest.raises(HistobagError, match=r"tile transform 'example-bad'.*float32"):
        extractor(wsi, num_workers=0, tile_transforms=bad)


def test_apply_checks_the_output_outside_the_engine(bad_transform):
    (transform,) = resolve_tile_transforms({"name": "example-bad", "kwargs": {"problem": "3-D"}})
    with pytest.raises(TileTransformError, match=r"'example-bad'.*uint8 tensor \(3, 16, 16\)"):
        transform(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    assert issubclass(TileTransformError, PluginError)


# ------------------------------------------------------------------------------------------
# extractor(wsi) and extractor("x.tfrecords")
# ------------------------------------------------------------------------------------------


def test_extractor_on_a_wsi_applies_the_transforms(extractor, slides):
    wsi = WSI(slides / "slide-0.svs", TILE_PX, TILE_UM)
    tiles, keep = wsi.read_tiles(range(len(wsi)), return_mask=True)
    expected = features_of(extractor, np_apply(INVERT_AND_ROTATE, tiles[keep]))
    grid = extractor(wsi, num_workers=0, batch_size=5, tile_transforms=INVERT_AND_ROTATE)
    rows, cols = wsi.grid_index[keep].T
    np.testing.assert_allclose(grid[rows, cols].data, expected, rtol=1e-5, atol=1e-5)
    assert not grid.mask[rows, cols].any()


def test_extractor_on_a_tfrecord_applies_the_transforms(extractor, tmp_path):
    path = tmp_path / "x.tfrecords"
    tiles = np.random.default_rng(5).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    with TFRecordWriter(path) as writer:
        for i, tile in enumerate(tiles):
            writer.write_tile("x", encode_image(tile, "png"), 8 + 16 * i, 8)
    request = {"name": "example-rot90", "kwargs": {"k": 2}}
    features, coords = extractor(str(path), num_workers=0, batch_size=4, tile_transforms=request)
    expected = features_of(extractor, np_apply(request, tiles))
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert coords.shape == (9, 2)


def test_an_empty_tfrecord_gives_no_rows(extractor, tmp_path):
    path = tmp_path / "empty.tfrecords"
    with TFRecordWriter(path):
        pass
    features, coords = extractor(str(path), num_workers=0, tile_transforms="example-invert")
    assert features.shape == (0, PIXELNET.num_features) and coords.shape == (0, 2)


# ------------------------------------------------------------------------------------------
# Bad requests fail before any slide is opened
# ------------------------------------------------------------------------------------------


@pytest.fixture
def no_slide_opens(monkeypatch):
    """Opening any slide from here on fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a slide was opened")

    monkeypatch.setattr(WSI, "__init__", refuse)


def test_an_unknown_name_fails_before_any_slide_is_opened(
    extractor, dataset, tmp_path, no_slide_opens
):
    outdir = tmp_path / "bags"
    message = (
        r"unknown tile transform 'exmaple-invert'; registered tile transforms: "
        r".*example-crop, example-invert, example-rot90"
    )
    with pytest.raises(ArgumentError, match=message):
        bags(extractor, dataset, outdir, tile_transforms=["example-rot90", "exmaple-invert"])
    assert not outdir.exists()
    with pytest.raises(ArgumentError, match=message):
        extractor(str(tmp_path / "missing.tfrecords"), tile_transforms="exmaple-invert")


def test_a_stain_normalizer_given_as_a_tile_transform_says_where_it_goes(
    extractor, dataset, tmp_path
):
    with pytest.raises(
        ArgumentError, match=r"'macenko' is a stain normalizer: pass it as normalizer="
    ):
        bags(extractor, dataset, tmp_path / "bags", tile_transforms="macenko")


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (lambda t: t, "takes registered names"),
        ({"name": "example-rot90", "kwargs": {"k": 1}, "extra": 1}, "takes registered names"),
        ({"name": "example-rot90", "kwargs": {"k": object()}}, "must be JSON-able"),
        ({"name": "example-rot90", "kwargs": {"k": float("nan")}}, "must be JSON-able"),
        ({"name": "example-rot90", "kwargs": {1: 2}}, "must be JSON-able"),
        ({"name": "example-rot90", "kwargs": {"turns": 2}}, "refuses the keyword arguments"),
        ({"name": "example-invert", "kwargs": {"channels": [3]}}, "refuses the keyword argum"),
        ("example-crop", r"refuses the keyword arguments \{\}: .*height"),
    ],
    ids=[
        "callable",
        "extra-key",
        "object",
        "nan",
        "int-key",
        "unknown-kwarg",
        "bad-value",
        "missing-kwargs",
    ],
)
def test_bad_requests_are_argument_errors(request_, match):
    with pytest.raises(ArgumentError, match=match):
        resolve_tile_transforms(request_)


def test_cli_applies_repeated_transforms_in_order(extractor, slides, tmp_path, capsys):
    # ``extractor`` keeps pixelnet registered in-process for the command to build by name.
    args = ["extract", "--extractor", "pixelnet", "--slides", str(slides)]
    args += ["--tile-px", str(TILE_PX), "--tile-um", str(TILE_UM), "--workers", "0"]
    args += ["--no-progress", "--outdir", str(tmp_path / "bags")]
    order = ["--tile-transform", "example-rot90", "--tile-transform", "example-invert"]
    assert cli_main([*args, *order]) == 0, capsys.readouterr().err
    assert read_config(tmp_path / "bags")["tile_transforms"] == [
        {"name": "example-rot90", "kwargs": {}},
        {"name": "example-invert", "kwargs": {}},
    ]
    assert cli_main([*args[:-1], str(tmp_path / "typo"), "--tile-transform", "nope"]) == 2
    err = capsys.readouterr().err
    assert "error: unknown tile transform 'nope'; registered tile transforms:" in err
    assert not (tmp_path / "typo").exists()


# ------------------------------------------------------------------------------------------
# TransformSpec validates its kind and factory
# ------------------------------------------------------------------------------------------


def test_a_transform_spec_with_a_bad_kind_is_refused():
    with pytest.raises(PluginError, match=r"Transform 'blur' \(pack 'histobag-example'\): kind"):
        TransformSpec(
            "blur", "pkg.mod:blur", kind="tile-transform", distribution="histobag-example"
        )
    with pytest.raises(PluginError, match="'stain_normalizer', 'tile_transform'"):
        TransformSpec("blur", "pkg.mod:blur", kind="augmentation")
    assert TRANSFORM_KINDS == ("stain_normalizer", "tile_transform")


@pytest.mark.parametrize("factory", ["pkg.mod.blur", ":blur", "pkg.mod:", None])
def test_a_transform_spec_with_a_bad_factory_is_refused(factory):
    with pytest.raises(PluginError, match=r"Transform 'blur': factory must be a 'module:attr'"):
        TransformSpec("blur", factory, kind="tile_transform")


def test_the_example_pack_registers_its_tile_transforms():
    specs = transform_specs()
    for name in ("example-invert", "example-rot90", "example-crop"):
        assert specs[name].kind == "tile_transform"
        assert specs[name].distribution == "histobag-example"


def test_project_runs_with_other_tile_transforms_get_their_own_folders(extractor, slides, tmp_path):
    from histobag.project import Project

    project = Project.create(tmp_path / "project", slides=slides)
    dataset = project.dataset(TILE_PX, TILE_UM)
    kwargs = {"num_workers": 0, "progress": False}
    plain = project.generate_feature_bags(extractor, dataset, **kwargs)
    inverted = project.generate_feature_bags(
        extractor, dataset, tile_transforms=["example-invert"], **kwargs
    )
    assert plain.ok and inverted.ok
    assert plain.outdir != inverted.outdir
    assert inverted.outdir.name.endswith("_example-invert")
    assert read_config(plain.outdir)["tile_transforms"] == []
    assert read_config(inverted.outdir)["tile_transforms"] == [
        {"name": "example-invert", "kwargs": {}}
    ]


def test_dataset_features_and_features_apply_tile_transforms_like_the_bags(
    extractor, dataset, slides, tmp_path
):
    from histobag.analysis import DatasetFeatures, Features

    request = ["example-invert", {"name": "example-rot90", "kwargs": {"k": 3}}]
    in_memory = DatasetFeatures(
        extractor, dataset, tile_transforms=request, num_workers=0, normalizer=None
    )
    expected = features_of(extractor, np_apply(request, kept_tiles(slides / "slide-0.svs")))
    np.testing.assert_allclose(in_memory.activations["slide-0"], expected, atol=1e-5)
    report = in_memory.to_torch(tmp_path / "bags")
    assert read_config(report.outdir)["tile_transforms"] == [
        {"name": "example-invert", "kwargs": {}},
        {"name": "example-rot90", "kwargs": {"k": 3}},
    ]
    per_call = Features(extractor, tile_transforms=request, normalizer=None)
    tiles = kept_tiles(slides / "slide-0.svs")[:4]
    np.testing.assert_allclose(per_call(tiles), expected[:4], atol=1e-5)
