"""Dataset (slides + annotations + tile size), Project folders, and slide-name sanitising."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from histobag.dataset import Dataset
from histobag.errors import ConfigError
from histobag.io.tfrecord import TFRecordReader
from histobag.naming import MAX_NAME_LENGTH, safe_name
from histobag.project import Project
from histobag.slide import WSI
from histobag.slide.samples import sample_slide

ANNOTATIONS = """slide,subtype,site,age
alpha,lusc,A,61
beta,luad,B,
gamma,luad,A,47.5
broken,lusc,C,70
orphan,luad,A,50
"""


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory, vendor_dir):
    folder = tmp_path_factory.mktemp("dataset_slides")
    for seed, name in enumerate(["alpha", "beta", "gamma"]):
        sample_slide(folder / f"{name}.svs", size=(1024, 768), seed=seed, levels=2)
    shutil.copy(vendor_dir / "unopenable.tiff", folder / "broken.tiff")
    (folder / "notes.txt").write_text("not a slide")
    return folder


@pytest.fixture
def annotations(tmp_path):
    path = tmp_path / "annotations.csv"
    path.write_text(ANNOTATIONS)
    return path


def test_slides_paths_and_filters(slide_dir, annotations):
    unannotated = Dataset(slide_dir)
    assert unannotated.slides() == ["alpha", "beta", "broken", "gamma"]
    ds = Dataset(slide_dir, annotations, 64, 128)
    assert ds.slides() == ["alpha", "beta", "broken", "gamma"]  # 'orphan' has no file
    assert [p.name for p in ds.slide_paths()] == [
        "alpha.svs",
        "beta.svs",
        "broken.tiff",
        "gamma.svs",
    ]
    assert Dataset(annotations=annotations).slides() == [
        "alpha",
        "beta",
        "broken",
        "gamma",
        "orphan",
    ]

    site_a = ds.filter(filters={"site": ["A"]})
    assert site_a.slides() == ["alpha", "gamma"]
    assert len(ds) == 4
    assert ds.filter(filter_blank="age").slides() == ["alpha", "broken", "gamma"]
    both = Dataset(slide_dir, annotations, filters={"site": "A", "age": [61]}, filter_blank=["age"])
    assert both.slides() == ["alpha"]
    assert list(both.annotations["subtype"]) == ["lusc"]
    with pytest.raises(ConfigError, match="no column 'stage'"):
        ds.filter(filters={"stage": ["I"]})
    with pytest.raises(ConfigError, match="need annotations"):
        Dataset(slide_dir, filters={"site": ["A"]})


def test_labels_categorical_float_and_multiple(slide_dir, annotations):
    ds = Dataset(slide_dir, annotations)
    labels, unique = ds.labels("subtype")
    assert unique == ["luad", "lusc"]
    assert labels == {"alpha": 1, "beta": 0, "broken": 1, "gamma": 0}

    ages, unique_ages = ds.filter(filter_blank=["age"]).labels("age", use_float=True)
    assert ages == {"alpha": 61.0, "broken": 70.0, "gamma": 47.5}
    assert unique_ages == [47.5, 61.0, 70.0]

    multi, uniques = ds.labels(["subtype", "site"])
    assert multi["beta"] == [0, 1]
    assert uniques == {
        "subtype": ["luad", "lusc"],
        "site": ["A", "B", "C"],
    }
    with pytest.raises(ConfigError, match=r"filter_blank=\['age'\]"):
        ds.labels("age", use_float=True)
    with pytest.raises(ConfigError, match="non-numeric"):
        ds.labels("site", use_float=True)


def test_annotations_from_a_dataframe_and_bad_annotations(slide_dir, tmp_path):
    frame = pd.DataFrame({"slide": ["alpha", "beta"], "grade": [1, None]})
    ds = Dataset(slide_dir, frame)
    assert ds.slides() == ["alpha", "beta"]
    assert ds.filter(filter_blank=["grade"]).labels("grade", use_float=True)[0] == {"alpha": 1.0}
    with pytest.raises(ConfigError, match="'slide' column"):
        Dataset(slide_dir, pd.DataFrame({"name": ["alpha"]}))
    with pytest.raises(ConfigError, match="more than once"):
        Dataset(slide_dir, pd.DataFrame({"slide": ["alpha", "alpha"]}))
    with pytest.raises(ConfigError, match="does not exist"):
        Dataset(slide_dir, tmp_path / "missing.csv")


def test_extract_tiles_reports_a_bad_slide_and_continues(slide_dir, annotations, tmp_path):
    ds = Dataset(slide_dir, annotations, 64, 128, tfrecords=tmp_path / "tfr")
    summary = ds.extract_tiles(progress=False)
    assert sorted(summary.written) == ["alpha", "beta", "gamma"]
    assert list(summary.failed) == ["broken"]
    assert "SlideOpenError" in summary.failed["broken"]
    assert "broken.tiff" in summary.failed["broken"]
    assert "1 failed" in str(summary)
    assert [p.name for p in ds.tfrecords()] == [
        "alpha.tfrecords",
        "beta.tfrecords",
        "gamma.tfrecords",
    ]
    for name, path in summary.written.items():
        reader = TFRecordReader(path)
        assert len(reader) == summary.num_tiles[name] > 0
        assert reader[0]["slide"] == name.encode()

    again = ds.filter(filters={"site": ["A"]}).extract_tiles(progress=False, skip_existing=True)
    assert sorted(again.skipped) == ["alpha", "gamma"]
    assert not again.written

    wsi = ds.wsi("alpha", stride_div=2)
    assert isinstance(wsi, WSI)
    assert (wsi.tile_px, wsi.tile_um, wsi.stride_px) == (64, 128, 128)
    with pytest.raises(ConfigError, match="No slide file for 'orphan'"):
        ds.wsi("orphan")
    with pytest.raises(ConfigError, match="tile_px"):
        Dataset(slide_dir).wsi("alpha")


def test_roi_folder_is_used_per_slide(slide_dir, tmp_path):
    rois = tmp_path / "rois"
    rois.mkdir()
    (rois / "alpha.csv").write_text("roi_name,x_base,y_base\nr,0,0\nr,300,0\nr,300,300\nr,0,300\n")
    ds = Dataset(slide_dir, tile_px=64, tile_um=128, roi=rois)
    assert ds.roi_file("alpha") == rois / "alpha.csv"
    assert ds.roi_file("beta") is None
    alpha = ds.wsi("alpha", tissue=None)
    assert alpha.roi_method == "inside"
    assert alpha.coords.tolist() == [[0, 0]]
    assert len(ds.wsi("beta", tissue=None)) == 12  # no ROI file: the whole 4 x 3 grid


def test_project_create_open_and_dataset(slide_dir, annotations, tmp_path):
    root = tmp_path / "proj"
    Project.create(root, slides=slide_dir, annotations=annotations, name="lung")
    settings = json.loads((root / "project.json").read_text())
    assert settings["name"] == "lung"
    assert settings["slides"] == str(slide_dir.resolve())
    for folder in ("tfrecords", "bags", "models", "results"):
        assert (root / folder).is_dir()

    reopened = Project(root)
    assert reopened.name == "lung"
    assert reopened.annotations == annotations.resolve()
    assert reopened.tfrecords_dir(256, 128) == root.resolve() / "tfrecords" / "256px_128um"
    assert reopened.tfrecords_dir(256, "20X").name == "256px_20x"
    assert reopened.tfrecords_dir(299, 302.5).name == "299px_302.5um"
    assert reopened.bags_dir == root.resolve() / "bags"
    assert reopened.models_dir.name == "models"
    assert reopened.results_dir.name == "results"

    ds = reopened.dataset(64, 128, filters={"site": ["A"]}, filter_blank=["age"])
    assert ds.slides() == ["alpha", "gamma"]
    assert ds.tfrecords_dir == reopened.tfrecords_dir(64, 128)
    with pytest.raises(ConfigError, match="already holds a project"):
        Project.create(root)


def test_project_errors_point_to_project_create(tmp_path):
    with pytest.raises(ConfigError, match=r"Project\.create"):
        Project(tmp_path)
    (tmp_path / "project.json").write_text("{broken")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Project(tmp_path)
    (tmp_path / "project.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ConfigError, match="not a histobag project file"):
        Project(tmp_path)


def test_paths_inside_the_project_are_stored_relative(tmp_path):
    root = tmp_path / "p"
    (root / "slides").mkdir(parents=True)
    sample_slide(root / "slides" / "one.svs", size=(512, 512), levels=1)
    Project.create(root, slides=root / "slides")
    assert json.loads((root / "project.json").read_text())["slides"] == "slides"
    moved = tmp_path / "moved"
    root.rename(moved)
    assert Project(moved).dataset(64, 64).slides() == ["one"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("TCGA-AA-3514.01", "TCGA-AA-3514.01"),
        ("slide 1 (copy)", "slide_1_copy_"),
        ("../../etc/passwd", "_.._etc_passwd"),
        (".hidden", "hidden"),
        ("Ångström é", "Angstrom_e"),
        ("CON", "_CON"),
        ("a\\b/c:d*e?f", "a_b_c_d_e_f"),
    ],
)
def test_safe_name(name, expected):
    assert safe_name(name) == expected
    assert safe_name(expected) == expected  # idempotent


def test_safe_name_empty_long_and_colliding(slide_dir, tmp_path):
    assert safe_name("").startswith("unnamed_")
    assert safe_name("///") != safe_name("???")
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(safe_name(long_a)) == MAX_NAME_LENGTH
    assert safe_name(long_a) != safe_name(long_b)
    assert safe_name(safe_name(long_a)) == safe_name(long_a)
    clash = pd.DataFrame({"slide": ["a b", "a_b"]})
    with pytest.raises(ConfigError, match="share the output name 'a_b'"):
        Dataset(annotations=clash)
