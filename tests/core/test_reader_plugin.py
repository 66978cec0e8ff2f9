"""A third-party slide reader installed as a package, used by ``open_reader`` and ``extract``.

``tests/plugins/histobag-reader-example`` was written from docs/plugins.md ("Slide readers")
and is pip-installed by the test setup (``make test``). It registers ``reader="npyslide"`` for
the new suffix ``.npyslide`` (a NumPy ``.npz`` pyramid) through the ``histobag`` entry-point
group, using public names only.
"""

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import histobag_reader_example
import numpy as np
import openslide
import pytest
import torch
from histobag_reader_example.reader import write_npyslide

from histobag.cli import main
from histobag.errors import SlideOpenError
from histobag.plugins import slide_reader_specs
from histobag.slide.readers import SlideReader, candidates, open_reader
from histobag.slide.samples import sample_slide
from tests.core.test_bag_writer_plugin import _private_names

REPO_ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "histobag-reader-example"
TILE_PX, TILE_UM = 16, 8


def _openslide_levels(path: Path) -> list[np.ndarray]:
    """Every level of a slide as OpenSlide reads it, uint8 RGB."""
    with openslide.OpenSlide(str(path)) as osr:
        return [
            np.asarray(osr.read_region((0, 0), level, size).convert("RGB"))
            for level, size in enumerate(osr.level_dimensions)
        ]


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Two SVS slides (lossless) and the same pyramids as ``.npyslide`` files, apart."""
    root = tmp_path_factory.mktemp("reader-plugin")
    (root / "svs").mkdir()
    (root / "npy").mkdir()
    for i in range(2):
        svs = sample_slide(root / "svs" / f"slide-{i}.svs", size=(768, 512), seed=i, levels=2)
        write_npyslide(root / "npy" / f"slide-{i}.npyslide", _openslide_levels(svs), mpp=0.5)
    return root


def test_the_reader_is_discovered_through_its_entry_point():
    spec = slide_reader_specs()["npyslide"]
    assert spec.distribution == DISTRIBUTION
    assert spec.suffixes == (".npyslide",) and spec.license == "MIT"
    (entry_point,) = [
        ep
        for ep in importlib.metadata.distribution(DISTRIBUTION).entry_points
        if ep.group == "histobag"
    ]
    assert entry_point.value == "histobag_reader_example.plugin"
    reader_cls = spec.load()
    assert issubclass(reader_cls, SlideReader)
    assert reader_cls.__module__.startswith("histobag_reader_example.")


def test_open_reader_picks_the_plugin_for_its_suffix_only(slides):
    path = str(slides / "npy" / "slide-0.npyslide")
    assert [s.name for s in candidates(path)][:1] == ["npyslide"]
    assert "npyslide" not in [s.name for s in candidates(str(slides / "svs" / "slide-0.svs"))]
    name, reader = open_reader(path)
    try:
        assert name == "npyslide" and isinstance(reader, SlideReader)
        assert reader.dimensions == (768, 512)
        assert reader.level_dimensions == ((768, 512), (192, 128))
        assert reader.level_downsamples == (1.0, 4.0)
        assert reader.mpp == 0.5 and reader.describe()["levels"] == 2
    finally:
        reader.close()
    name, reader = open_reader(str(slides / "svs" / "slide-0.svs"))
    reader.close()
    assert name == "openslide"


def test_a_broken_file_with_the_suffix_reports_every_reader_tried(tmp_path):
    bogus = tmp_path / "bogus.npyslide"
    bogus.write_bytes(b"not an archive")
    with pytest.raises(SlideOpenError) as caught:
        open_reader(str(bogus))
    assert "npyslide:" in str(caught.value) and "openslide:" in str(caught.value)
    with pytest.raises(SlideOpenError, match=r"bogus\.npyslide is not a \.npyslide file"):
        open_reader(str(bogus), reader="npyslide")


@pytest.mark.parametrize(
    ("level", "location", "size"),
    [
        (0, (100, 60), (64, 48)),  # inside
        (0, (730, 490), (64, 48)),  # across the bottom-right edge
        (0, (-20, -8), (40, 30)),  # across the top-left edge
        (1, (400, 200), (32, 24)),  # a lower level, inside
        (1, (-64, 440), (40, 30)),  # a lower level, across two edges
    ],
)
def test_regions_equal_openslides_of_the_same_pixels(slides, level, location, size):
    svs = slides / "svs" / "slide-1.svs"
    with openslide.OpenSlide(str(svs)) as osr:
        expected = np.asarray(osr.read_region(location, level, size).convert("RGBA"))
    # OpenSlide's transparent pixels beyond the edge are white in a reader's contract.
    expected = np.where(expected[..., 3:] == 0, 255, expected[..., :3]).astype(np.uint8)
    _, reader = open_reader(str(slides / "npy" / "slide-1.npyslide"))
    try:
        got = reader.read_region(location, level, size)
    finally:
        reader.close()
    assert got.dtype == np.uint8 and got.shape == (size[1], size[0], 3)
    assert np.array_equal(got, expected)


def _extract(slides: Path, outdir: Path, *extra: str) -> subprocess.CompletedProcess:
    """``histobag extract`` in a fresh process: the reader comes from its entry point."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "histobag.cli",
            "extract",
            "--extractor",
            "example-colorstats",
            "--slides",
            str(slides),
            "--tile-px",
            str(TILE_PX),
            "--tile-um",
            str(TILE_UM),
            "--outdir",
            str(outdir),
            "--workers",
            "1",
            "--no-progress",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_histobag_extract_reads_a_folder_of_plugin_slides(slides, tmp_path):
    runs = {
        "auto": _extract(slides / "npy", tmp_path / "auto"),
        "named": _extract(slides / "npy", tmp_path / "named", "--reader", "npyslide"),
        "svs": _extract(slides / "svs", tmp_path / "svs"),
    }
    for run, proc in runs.items():
        assert proc.returncode == 0, (run, proc.stderr)
    for run in ("auto", "named"):
        outdir = tmp_path / run
        assert sorted(p.name for p in outdir.glob("*.pt")) == ["slide-0.pt", "slide-1.pt"]
        report = json.loads((outdir / "run_report.json").read_text())["slides"]
        config = json.loads((outdir / "bags_config.json").read_text())
        assert config["reader"] == {"auto": "auto", "named": "npyslide"}[run]
        for slide in ("slide-0", "slide-1"):
            assert report[slide]["status"] == "done"
            assert report[slide]["reader"].split()[0] == "npyslide"
            features = torch.load(outdir / f"{slide}.pt", weights_only=True)
            # The same pixels through OpenSlide give the same tiles, hence the same features.
            expected = torch.load(tmp_path / "svs" / f"{slide}.pt", weights_only=True)
            assert features.shape[0] > 0 and torch.equal(features, expected)
            assert np.array_equal(
                np.load(outdir / f"{slide}.index.npz")["arr_0"],
                np.load(tmp_path / "svs" / f"{slide}.index.npz")["arr_0"],
            )
    svs_report = json.loads((tmp_path / "svs" / "run_report.json").read_text())["slides"]
    assert svs_report["slide-0"]["reader"].split()[0] == "openslide"


def test_histobag_slides_lists_plugin_slides_with_their_reader(slides, capsys):
    assert main(["slides", str(slides / "npy"), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [Path(row["path"]).name for row in listed] == ["slide-0.npyslide", "slide-1.npyslide"]
    for row in listed:
        assert row["reader"] == "npyslide" and row["error"] is None
        assert row["dimensions"] == [768, 512] and row["levels"] == 2 and row["mpp"] == 0.5


def _documented_reader_sources() -> list[tuple[str, str]]:
    """The python blocks of docs/plugins.md's reader section, and the installed package's."""
    doc = (REPO_ROOT / "docs" / "plugins.md").read_text()
    assert "\n## Slide readers\n" in doc, "docs/plugins.md has no 'Slide readers' section"
    section = doc.split("\n## Slide readers\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 2  # plugin.py, reader.py
    package = Path(histobag_reader_example.__file__).parent
    return [(f"docs/plugins.md block {i}", b) for i, b in enumerate(blocks)] + [
        (path.name, path.read_text()) for path in sorted(package.glob("*.py"))
    ]


def test_the_documented_reader_uses_no_private_histobag_name():
    sources = _documented_reader_sources()
    assert any(name == "reader.py" for name, _ in sources)
    for name, source in sources:
        assert _private_names(source) == [], name
