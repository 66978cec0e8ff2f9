"""The minimal core install: analysis and h5 are extras, and using them without says so.

The "missing" extra is simulated in a fresh interpreter whose ``sys.meta_path`` refuses the
extra's modules, as an interpreter without them installed would.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]
#: What the analysis extra brings (umap-learn brings numba and pynndescent) and the h5 extra.
EXTRA_MODULES = ("umap", "numba", "pynndescent", "matplotlib", "pyarrow", "h5py")
EXTRA_DISTRIBUTIONS = {"umap-learn", "numba", "matplotlib", "pyarrow", "h5py"}
INSTALL_HINT = 'pip install "histobag[analysis]"'

BLOCK = f"""
import sys

class _NotInstalled:
    \"\"\"Answer for the extras' modules as if they were not installed.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {EXTRA_MODULES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


def _without_extras(code: str, *args: str) -> subprocess.CompletedProcess:
    script = BLOCK + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        check=False,
    )


def _requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
        names.add(re.sub(r"[-_.]+", "-", name).lower())
    return names


def test_core_requirements_leave_analysis_and_h5_to_extras():
    project = tomllib.loads((REPO_ROOT / "core" / "pyproject.toml").read_text())["project"]
    core = _requirement_names(project["dependencies"])
    assert not core & EXTRA_DISTRIBUTIONS
    assert {"torch", "safetensors", "openslide-python", "pandas", "scipy"} <= core
    extras = project["optional-dependencies"]
    assert {"umap-learn", "matplotlib", "pyarrow"} <= _requirement_names(extras["analysis"])
    assert _requirement_names(extras["h5"]) == {"h5py"}
    assert extras["all"] == ["histobag[analysis,h5]"]


@pytest.mark.slow
def test_core_works_and_analysis_names_its_extra(tmp_path):
    proc = _without_extras(
        """
        import json, sys
        from pathlib import Path

        import histobag
        from histobag.errors import MissingDependencyError

        out = {}
        for name in ("SlideMap", "Mosaic"):
            try:
                getattr(histobag, name)
            except MissingDependencyError as exc:
                out[name] = [str(exc), exc.extra]
        try:
            from histobag.analysis import SlideMap
        except MissingDependencyError as exc:
            out["from histobag.analysis import SlideMap"] = [str(exc), exc.extra]

        # listing, building, slides, the engine and pt bags need no extra
        from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
        from tests.core.toy_models import registered

        root = Path(sys.argv[1])
        slides = make_slides(root / "slides", n=1)
        out["listed"] = len(histobag.list_extractors())
        with registered(PIXELNET):
            extractor = histobag.build_feature_extractor(
                "pixelnet", device="cpu", mixed_precision=False
            )
            dataset = histobag.Dataset(slides, tile_px=TILE_PX, tile_um=TILE_UM)
            report = dataset.generate_feature_bags(
                extractor, root / "bags", writer="pt", progress=False, num_workers=0
            )
        out["ok"] = report.ok
        out["bags"] = sorted(p.name for p in (root / "bags").glob("*.pt"))

        # features read back and their statistics need no extra; figures do
        import numpy as np
        from histobag.analysis.dataset_features import DatasetFeatures
        from histobag.analysis.slidemap import SlideMap, umap_embedding

        features = DatasetFeatures.from_bags(root / "bags")
        out["tiles"] = features.num_tiles
        labelled = DatasetFeatures.from_arrays(
            {f"s{i}": np.random.default_rng(i).random((6, 3)) for i in range(4)},
            annotations={"s0": "a", "s1": "a", "s2": "b", "s3": "b"},
        )
        out["stats rows"] = len(labelled.stats()[1])
        for what, call in {
            "box_plots": lambda: labelled.box_plots(0, root / "plots"),
            "umap": lambda: umap_embedding(np.random.default_rng(0).random((20, 3))),
            # four points are placed by PCA, without umap; .parquet needs pyarrow
            "parquet": lambda: SlideMap.from_features(labelled, "average").save_coords(
                root / "map.parquet"
            ),
        }.items():
            try:
                call()
            except MissingDependencyError as exc:
                out[what] = [str(exc), exc.extra]
        print(json.dumps(out))
        """,
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in (
        "SlideMap",
        "Mosaic",
        "from histobag.analysis import SlideMap",
        "box_plots",
        "umap",
        "parquet",
    ):
        message, extra = out[key]
        assert INSTALL_HINT in message, key
        assert extra == "analysis"
    assert "histobag.SlideMap needs umap" in out["SlideMap"][0]
    assert "matplotlib" in out["box_plots"][0]
    assert "umap" in out["umap"][0]
    assert "pyarrow" in out["parquet"][0]
    assert out["listed"] > 0
    assert out["ok"] is True
    assert out["bags"] == ["slide-0.pt"]
    assert out["tiles"] > 0
    assert out["stats rows"] == 3


def test_analysis_commands_name_the_extra_without_a_traceback(tmp_path):
    commands = {
        "umap": ["umap", "--bags", str(tmp_path)],
        "mosaic": ["mosaic", "--bags", str(tmp_path), "--slides", str(tmp_path)],
        "stats": [
            "stats",
            "--bags",
            str(tmp_path),
            "--annotations",
            "a.csv",
            "--label",
            "x",
            "--outdir",
            str(tmp_path),
            "--box-plots",
            "1",
        ],
    }
    for name, argv in commands.items():
        proc = _without_extras(
            "import sys\nfrom histobag.cli import main\nsys.exit(main(sys.argv[1:]))", *argv
        )
        assert proc.returncode == 2, (name, proc.stderr)
        assert INSTALL_HINT in proc.stderr, name
        assert f"histobag {name}" in proc.stderr
        assert "Traceback" not in proc.stderr
    listing = _without_extras("import sys\nfrom histobag.cli import main\nsys.exit(main(['list']))")
    assert listing.returncode == 0, listing.stderr
    assert "resnet50_imagenet" in listing.stdout
