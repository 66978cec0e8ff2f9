"""Argument checks at the API boundary: bad values fail at once, saying what is allowed."""

import errno
import os

import numpy as np
import pytest

import histobag
from histobag import validation
from histobag.analysis import DatasetFeatures
from histobag.errors import ArgumentError, ConfigError, HistobagError, StorageError
from histobag.project import Project
from histobag.slide import WSI, TileSettingsError
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return make_slides(tmp_path_factory.mktemp("valslides"), n=1)


@pytest.fixture
def extractor():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


def _bags(slides, extractor, outdir, **kwargs):
    dataset = histobag.Dataset(slides, tile_px=TILE_PX, tile_um=TILE_UM)
    kwargs.setdefault("progress", False)
    return histobag.generate_feature_bags(extractor, dataset, outdir, **kwargs)


# ------------------------------------------------------------------ the checks themselves


@pytest.mark.parametrize("good", [1, 32, np.int64(7)])
def test_batch_size_accepts_positive_integers(good):
    assert validation.check_batch_size(good) == int(good)


@pytest.mark.parametrize("bad", [0, -4, 2.0, "32", True, None])
def test_batch_size_refuses_the_rest_naming_value_and_range(bad):
    with pytest.raises(ArgumentError, match=r"batch_size must be an integer >= 1, got") as err:
        validation.check_batch_size(bad)
    assert repr(bad) in str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, HistobagError)


@pytest.mark.parametrize(("given", "expected"), [("auto", "auto"), (0, 0), (3, 3), ("4", 4)])
def test_num_workers_accepts_auto_integers_and_numeric_strings(given, expected):
    assert validation.check_num_workers(given) == expected


@pytest.mark.parametrize("bad", [-3, "many", "-1", 2.5, 10**6, True])
def test_num_workers_refuses_the_rest(bad):
    with pytest.raises(ArgumentError, match=r"'auto' or an integer from 0 to 1024") as err:
        validation.check_num_workers(bad, name="--workers")
    assert str(err.value).startswith("--workers must be")


@pytest.mark.parametrize("bad", [0, 7, 16385, 10**6, 224.0, "224"])
def test_tile_px_bounds(bad):
    with pytest.raises(ArgumentError, match=r"tile_px must be an integer from 8 to 16384"):
        validation.check_tile_px(bad)
    assert validation.check_tile_px(8) == 8 and validation.check_tile_px(16384) == 16384


def test_tile_um_numbers_magnifications_and_numeric_strings():
    assert validation.check_tile_um(128) == 128
    assert validation.check_tile_um("20x") == "20x"
    assert validation.check_tile_um("2.5X") == "2.5X"
    assert validation.check_tile_um("128") == 128.0
    for bad in [0, -5, float("nan"), float("inf"), 1e6, "twenty", "0x", True]:
        with pytest.raises(ArgumentError, match="tile_um"):
            validation.check_tile_um(bad)
    with pytest.raises(ArgumentError, match="spans 1,638,400 µm, more than 100,000 µm"):
        validation.check_tile_size(16384, "0.1x")  # 1.6 m wide
    with pytest.raises(TileSettingsError):  # the caller's error class
        validation.check_tile_size(10**6, 128, error=TileSettingsError)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), 352.8, "0.5", None])
def test_mpp_bounds(bad):
    with pytest.raises(ArgumentError, match="mpp must be a positive number of microns per"):
        validation.check_mpp(bad)
    assert validation.check_mpp(0.25) == 0.25


def test_output_dir_file_under_a_file_and_broken_link(tmp_path):
    file = tmp_path / "bags.txt"
    file.write_text("not a folder")
    with pytest.raises(ArgumentError, match="is a file, not a folder"):
        validation.check_output_dir(file)
    with pytest.raises(ArgumentError, match=f"lies under {file}, which is a file"):
        validation.check_output_dir(file / "deeper" / "bags")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ArgumentError, match="broken link"):
        validation.check_output_dir(tmp_path / "link")
    assert validation.check_output_dir(tmp_path / "new" / "bags") == tmp_path / "new" / "bags"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def _deny_writes_to(monkeypatch, folder, read_only):
    """Make ``folder`` look unwritable to the check (as root, chmod does not stop writes)."""
    real_access, real_statvfs = os.access, os.statvfs

    def access(path, mode, *args, **kwargs):
        if os.fspath(path) == os.fspath(folder) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    class ReadOnly:
        f_flag = os.ST_RDONLY

    def statvfs(path):
        return (
            ReadOnly()
            if read_only and os.fspath(path) == os.fspath(folder)
            else (real_statvfs(path))
        )

    monkeypatch.setattr(validation.os, "access", access)
    monkeypatch.setattr(validation.os, "statvfs", statvfs)


@pytest.mark.parametrize("read_only", [True, False])
def test_output_dir_not_writable_is_a_storage_error(tmp_path, monkeypatch, read_only):
    """Simulated: this proves the wording and error class, not the detection (see
    test_cli_errors for a real read-only mount and a real chmod)."""
    _deny_writes_to(monkeypatch, tmp_path, read_only)
    with pytest.raises(StorageError) as err:
        validation.check_output_dir(tmp_path / "bags")
    why = "is on a read-only file system" if read_only else "is not writable by this user"
    assert f"{tmp_path} {why}; choose a folder you can write to" in str(err.value)
    assert "it would be created in" in str(err.value)
    assert err.value.errno == (errno.EROFS if read_only else errno.EACCES)


# ------------------------------------------------------------------ the public functions


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"batch_size": -4}, "batch_size must be an integer >= 1, got -4"),
        ({"num_workers": -3}, "num_workers must be 'auto' or an integer from 0 to 1024"),
        ({"num_workers": "many"}, "got 'many'"),
        ({"min_tiles": -1}, "min_tiles must be an integer >= 0"),
        ({"max_tiles": 2.5}, "max_tiles must be an integer >= 0"),
        ({"source": "tape"}, "source must be one of 'auto', 'slides', 'tfrecords'"),
    ],
)
def test_generate_feature_bags_checks_arguments_before_any_work(
    slides, extractor, tmp_path, kwargs, message
):
    # Before: batch 0 raised ZeroDivisionError, batch -4 failed every slide as "could not be
    # read", workers -3 / "many" raised a raw ValueError.
    with pytest.raises(ArgumentError, match=message):
        _bags(slides, extractor, tmp_path / "bags", **kwargs)
    assert not (tmp_path / "bags").exists()


def test_generate_feature_bags_outdir_file_and_under_a_file(slides, extractor, tmp_path):
    file = tmp_path / "out.txt"
    file.write_text("x")
    with pytest.raises(ArgumentError, match="is a file, not a folder"):
        _bags(slides, extractor, file)
    with pytest.raises(ArgumentError, match="which is a file"):
        _bags(slides, extractor, file / "bags")


def test_generate_feature_bags_write_failure_is_a_storage_error(
    slides, extractor, tmp_path, monkeypatch
):
    """A folder that passes the check but refuses the first write (EROFS from the kernel)."""
    import histobag.bags.generate as bags_module

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(bags_module, "prepare_bags_folder", refuse)
    with pytest.raises(StorageError, match="read-only file system"):
        _bags(slides, extractor, tmp_path / "bags")


def test_dataset_wsi_and_project_refuse_absurd_tile_sizes(slides, tmp_path):
    with pytest.raises(TileSettingsError, match="from 8 to 16384 pixels, got 1000000"):
        histobag.Dataset(slides, tile_px=10**6, tile_um=TILE_UM)
    with pytest.raises(TileSettingsError, match="tile_um must be a positive number"):
        histobag.Dataset(slides, tile_px=TILE_PX, tile_um=float("inf"))
    with pytest.raises(TileSettingsError, match="from 8 to 16384 pixels"):
        WSI(slides / "slide-0.svs", 10**6, 128, tissue=None)
    with pytest.raises(TileSettingsError, match="tissue_fraction must be a number from 0 to 1"):
        WSI(slides / "slide-0.svs", 64, 128, tissue_fraction=50)
    with pytest.raises(TileSettingsError, match=r"mpp must be .* from 0\.01 to 100"):
        WSI(slides / "slide-0.svs", 64, 128, mpp=352.8)
    project = Project.create(tmp_path / "project", slides=slides)
    with pytest.raises(TileSettingsError, match="got 1000000"):
        project.dataset(10**6, 128)
    with pytest.raises(TileSettingsError, match="got 'twenty'"):
        project.dataset(256, "twenty")


def test_dataset_numeric_string_tile_um_is_micrometres(slides):
    assert histobag.Dataset(slides, tile_px=TILE_PX, tile_um="8").tile_um == 8.0


def test_slides_or_annotations_of_the_wrong_kind(slides, tmp_path):
    with pytest.raises(ConfigError, match="is a file; give a folder of slides"):
        histobag.Dataset(slides / "slide-0.svs", tile_px=TILE_PX, tile_um=TILE_UM)
    with pytest.raises(ConfigError, match="is a folder, not a CSV file"):
        histobag.Dataset(slides, tmp_path)


def test_dataset_features_checks_arguments(slides, extractor):
    dataset = histobag.Dataset(slides, tile_px=TILE_PX, tile_um=TILE_UM)
    with pytest.raises(ArgumentError, match="batch_size must be an integer >= 1, got 0"):
        DatasetFeatures(extractor, dataset, batch_size=0)
    with pytest.raises(ArgumentError, match="num_workers"):
        DatasetFeatures(extractor, dataset, num_workers="many")


def test_extractor_call_checks_arguments(slides, extractor):
    """FeatureExtractor(wsi) runs the engine: it checks batch size and workers (engine.run)."""
    wsi = WSI(slides / "slide-0.svs", TILE_PX, TILE_UM)
    with pytest.raises(ArgumentError, match="batch_size must be an integer >= 1, got 0"):
        extractor(wsi, batch_size=0, num_workers=0)
    with pytest.raises(ArgumentError, match="num_workers"):
        extractor(wsi, batch_size=8, num_workers=-3)
