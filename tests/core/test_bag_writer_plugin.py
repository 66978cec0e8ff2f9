"""A third-party bag writer installed as a package, and the public bag-writer API.

``tests/plugins/histobag-writer-example`` was written from docs/plugins.md ("A complete
third-party bag writer") and is pip-installed by the test setup (``make test``). It provides
``writer="npz"`` through the ``histobag`` entry-point group and uses public names only.
"""

import ast
import importlib.metadata
import json
import re
import sys
import warnings
from pathlib import Path

import histobag_writer_example
import numpy as np
import pytest
import torch

import histobag
from histobag.bags.read import read_bag
from histobag.cli import main
from histobag.errors import MissingDependencyError, PluginError
from histobag.files import TMP_PREFIX
from histobag.geometry import TileGeometry
from histobag.io.bag_writers import BagWriter, get_writer
from histobag.plugins import bag_writer_specs
from histobag.slide import WSI
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, NpzWriter, make_slides
from tests.core.toy_models import registered

REPO_ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "histobag-writer-example"
GEOMETRY = TileGeometry(tile_px=16, tile_um=8.0, extent_px=32, mpp=0.25, level=1)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return make_slides(tmp_path_factory.mktemp("writer-slides"), n=2)


@pytest.fixture(scope="module")
def runs(slides, tmp_path_factory):
    """The same extractor over the same slides, once with ``pt`` and once with ``npz``."""
    root = tmp_path_factory.mktemp("writer-runs")
    dataset = histobag.Dataset(slides, tile_px=TILE_PX, tile_um=TILE_UM)
    with registered(PIXELNET):
        extractor = histobag.build_feature_extractor(
            "pixelnet", device="cpu", mixed_precision=False
        )
        reports = {
            writer: histobag.generate_feature_bags(
                extractor,
                dataset,
                root / writer,
                writer=writer,
                batch_size=8,
                num_workers=0,
                progress=False,
            )
            for writer in ("pt", "npz")
        }
        yield root, dataset, extractor, reports


def test_the_writer_is_discovered_through_its_entry_point():
    spec = bag_writer_specs()["npz"]
    assert spec.distribution == DISTRIBUTION
    (entry_point,) = [
        ep
        for ep in importlib.metadata.distribution(DISTRIBUTION).entry_points
        if ep.group == "histobag"
    ]
    assert entry_point.value == "histobag_writer_example.plugin"
    writer_cls = spec.load()
    assert issubclass(writer_cls, BagWriter) and writer_cls.__module__.startswith(
        "histobag_writer_example."
    )


def test_bags_written_with_the_plugin_read_back_as_the_pt_run(runs, slides):
    root, _, _, reports = runs
    assert reports["npz"].ok and set(reports["npz"].done) == {"slide-0", "slide-1"}
    assert reports["npz"].done == reports["pt"].done
    assert json.loads((root / "npz" / "bags_config.json").read_text())["writer"] == "npz"
    for slide in reports["npz"].done:
        # The reference is the pt run's files read directly, not through any bag writer.
        expected = torch.load(root / "pt" / f"{slide}.pt", weights_only=True).numpy()
        centres = np.load(root / "pt" / f"{slide}.index.npz")["arr_0"]
        extent = WSI(slides / f"{slide}.svs", TILE_PX, TILE_UM).full_extract_px

        features, coords, convention = read_bag(root / "npz", slide)
        assert convention == "top_left"
        assert features.dtype == np.float32 and coords.dtype == np.int64
        assert np.array_equal(features, expected)
        assert np.array_equal(coords, centres - extent // 2)
        # The file is the documented layout, readable without histobag.
        with np.load(root / "npz" / f"{slide}.npz") as raw:
            assert np.array_equal(raw["features"], expected)
            assert int(raw["tile_px"]) == TILE_PX and int(raw["extent_px"]) == extent
    assert not list((root / "npz").glob(TMP_PREFIX + "*"))


def test_a_resumed_run_skips_the_plugin_bags(runs):
    root, dataset, extractor, reports = runs
    before = {p.name: p.stat().st_mtime_ns for p in (root / "npz").glob("*.npz")}
    again = histobag.generate_feature_bags(
        extractor, dataset, root / "npz", writer="npz", num_workers=0, progress=False
    )
    assert not again.done and again.skipped == reports["npz"].done
    assert {p.name: p.stat().st_mtime_ns for p in (root / "npz").glob("*.npz")} == before


def test_histobag_verify_passes_on_the_plugin_bags(runs, capsys):
    root, _, _, reports = runs
    assert main(["verify", str(root / "npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["verified"] == len(reports["npz"].done) == 2
    # It re-hashed the plugin's files, all of them.
    assert report["bytes_checked"] == sum(p.stat().st_size for p in (root / "npz").glob("*.npz"))


def _documented_writer_sources() -> list[tuple[str, str]]:
    """The python blocks of docs/plugins.md's writer section, and the installed package's."""
    doc = (REPO_ROOT / "docs" / "plugins.md").read_text()
    section = doc.split("## A complete third-party bag writer", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 3  # plugin.py, writer.py, usage
    package = Path(histobag_writer_example.__file__).parent
    return [(f"docs/plugins.md block {i}", b) for i, b in enumerate(blocks)] + [
        (path.name, path.read_text()) for path in sorted(package.glob("*.py"))
    ]


def _private_names(source: str) -> list[str]:
    """Private histobag names ``source`` imports, reads or overrides."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("histobag"):
            parts = node.module.split(".") + [alias.name for alias in node.names]
            found += [f"from {node.module} import {p}" for p in parts if p.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [
                a.name for a in node.names if any(p.startswith("_") for p in a.name.split("."))
            ]
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f".{node.attr}")
        elif isinstance(node, ast.ClassDef):
            found += [
                f"{node.name}.{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef)
                and item.name.startswith("_")
                and not item.name.startswith("__")
            ]
    return found


SOURCES = _documented_writer_sources()


@pytest.mark.parametrize("source", [s for _, s in SOURCES], ids=[n for n, _ in SOURCES])
def test_the_documented_writer_uses_no_private_histobag_name(source):
    assert _private_names(source) == []


def test_the_private_name_check_finds_private_names():
    legacy = (
        "from histobag.io.bag_writers import BagWriter\n"
        "from histobag._deprecated import warn_moved\n"
        "import histobag._version\n"
        "class W(BagWriter):\n"
        "    def _write(self, *args):\n"
        "        self._helper()\n"
    )
    assert len(_private_names(legacy)) == 4


def test_the_writer_implements_exactly_the_documented_methods():
    writer_cls = bag_writer_specs()["npz"].load()
    # _abc_impl is ABCMeta's bookkeeping, set on every subclass.
    own = {name for name in vars(writer_cls) if not name.startswith("__")} - {"_abc_impl"}
    assert own == {"name", "coordinates", "files", "write_files", "read"}


def _arrays(n=5, f=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, f)), rng.integers(0, 10_000, (n, 2))


def test_write_converts_coordinates_to_the_writers_convention(tmp_path):
    class Centres(NpzWriter):
        coordinates = "centre"

    features, top_left = _arrays()
    Centres(tmp_path).write("s", features, top_left, GEOMETRY)
    got_features, got_coords = Centres(tmp_path).read("s")
    assert got_features.dtype == np.float32 and got_coords.dtype == np.int64
    assert np.array_equal(got_features, features.astype(np.float32))
    assert np.array_equal(got_coords, top_left + GEOMETRY.extent_px // 2)
    assert Centres(tmp_path).is_complete("s", 3) and Centres(tmp_path).slides() == ["s"]


def test_a_writer_still_implementing_private_write_works_with_a_deprecation_warning(tmp_path):
    with pytest.warns(DeprecationWarning, match="write_files") as caught:

        class Legacy(BagWriter):
            name = "legacy"

            def files(self, slide):
                return [self.outdir / f"{slide}.npz"]

            def _write(self, slide, features, coords, geometry, tmp_paths):
                with open(tmp_paths[0], "wb") as handle:
                    np.savez(handle, features=features, coords=coords)

            def read(self, slide):
                with np.load(self.files(slide)[0]) as data:
                    return data["features"], data["coords"]

    assert caught[0].filename == __file__  # reported at the class statement
    features, top_left = _arrays()
    Legacy(tmp_path).write("s", features, top_left, GEOMETRY)
    assert np.array_equal(Legacy(tmp_path).read("s")[1], top_left)
    assert not list(tmp_path.glob(TMP_PREFIX + "*"))


def test_a_writer_with_the_public_method_gets_no_deprecation_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class Modern(NpzWriter):
            pass

    assert Modern.write_files is NpzWriter.write_files


def test_a_writer_must_implement_write_files():
    class Incomplete(BagWriter):
        name = "incomplete"

        def files(self, slide):
            return []

        def read(self, slide):
            raise NotImplementedError

    with pytest.raises(TypeError, match="write_files"):
        Incomplete(".")


def test_an_unknown_coordinate_convention_is_refused_at_class_definition():
    with pytest.raises(PluginError, match="top_left, centre"):

        class Corner(NpzWriter):
            coordinates = "bottom_right"


def test_a_writer_that_does_not_write_its_path_is_named(tmp_path):
    class Forgetful(NpzWriter):
        def write_files(self, slide, features, coords, geometry, paths):
            paths[0].unlink()

    with pytest.raises(PluginError, match=r"did not write s\.npz"):
        Forgetful(tmp_path).write("s", *_arrays(), GEOMETRY)
    assert not list(tmp_path.iterdir())


def test_a_writer_whose_write_files_fails_leaves_nothing(tmp_path):
    class Failing(NpzWriter):
        def write_files(self, slide, features, coords, geometry, paths):
            paths[0].write_bytes(b"half a bag")
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        Failing(tmp_path).write("s", *_arrays(), GEOMETRY)
    assert not list(tmp_path.iterdir())


def test_a_read_breaking_its_contract_is_reported_when_resuming(tmp_path):
    class Float64(NpzWriter):
        def read(self, slide):
            features, coords = super().read(slide)
            return features.astype(np.float64), coords

    Float64(tmp_path).write("s", *_arrays(), GEOMETRY)
    with pytest.raises(PluginError, match=r"float32 \(N, F\).*float64 \(5, 3\)"):
        Float64(tmp_path).is_complete("s")


def test_write_refuses_mismatched_arrays(tmp_path):
    features, top_left = _arrays()
    with pytest.raises(histobag.HistobagError, match="5 feature rows but 4 coordinates"):
        NpzWriter(tmp_path).write("s", features, top_left[:4], GEOMETRY)
    with pytest.raises(histobag.HistobagError, match=r"must be \(N, F\)"):
        NpzWriter(tmp_path).write("s", features[:, 0], top_left, GEOMETRY)


def test_the_h5_writer_without_h5py_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"histobag\[h5\]"):
        get_writer("h5", tmp_path).write("s", *_arrays(), GEOMETRY)
    assert not list(tmp_path.iterdir())


def test_a_writer_name_two_packs_provide_is_refused_naming_both(tmp_path):
    from histobag import BagWriterSpec, hookimpl, register_plugin, unregister_plugin
    from histobag.errors import DuplicateExtractorError
    from histobag.io.bag_writers import get_writer
    from histobag.plugins import PluginWarning

    class First:
        @hookimpl
        def histobag_bag_writers(self):
            return [BagWriterSpec("twice", "histobag.io.bag_writers:PtBagWriter")]

    class Second(First):
        pass

    first, second = First(), Second()
    register_plugin(first, name="first-pack")
    register_plugin(second, name="second-pack")
    try:
        with (
            pytest.warns(PluginWarning, match="twice"),
            pytest.raises(DuplicateExtractorError, match="twice") as caught,
        ):
            get_writer("twice", tmp_path)
        assert get_writer("pt", tmp_path).name == "pt"  # the other writers keep working
    finally:
        unregister_plugin(first)
        unregister_plugin(second)
    assert "both provide the bag writer" in str(caught.value)
