"""A full disk during extraction: one clear error, nothing partial, and a rerun that completes.

The disk is a real size-limited tmpfs mounted for the test (the tests run as root, as CI does),
so the kernel itself refuses the writes (ENOSPC), exactly as a full scratch disk would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import histobag
from histobag import ExtractorSpec, Preprocessing
from histobag.bags.generate import generate_feature_bags, slide_jobs
from histobag.bags.space import estimate_bag_bytes
from histobag.dataset import Dataset
from histobag.engine import CollectSink, Job, run
from histobag.errors import LowDiskSpaceWarning, StorageError
from histobag.files import TMP_PREFIX, write_json_atomic
from histobag.geometry import TileGeometry
from histobag.io.bag_writers import get_writer
from histobag.slide import WSI
from histobag.tile_readers import OpenWSI
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, PixelNet, make_slides
from tests.core.toy_models import registered

REPO_ROOT = Path(__file__).resolve().parents[2]
WIDTH = 256  # wide features, so bags and spill files are big enough to fill a small disk


def build_wide(spec: ExtractorSpec) -> torch.nn.Module:
    return PixelNet(WIDTH)


WIDE = ExtractorSpec(
    name="widenet",
    factory="tests.core.test_disk_full:build_wide",
    license="MIT",
    num_features=WIDTH,
    input_size=TILE_PX,
    preprocessing=Preprocessing(),
    weights_required=False,
)

# The command line, in a fresh interpreter, with the test's extractor registered in-process.
RUNNER = textwrap.dedent(
    """
    import sys
    from histobag import register_plugin
    from histobag.cli import main
    from tests.core.test_disk_full import WIDE
    from tests.core.toy_models import SpecPlugin
    register_plugin(SpecPlugin(WIDE))
    sys.exit(main(sys.argv[1:]))
    """
)


def extract(slides: Path, outdir: Path) -> subprocess.CompletedProcess:
    args = ["--extractor", "widenet", "--slides", str(slides), "--outdir", str(outdir)]
    args += ["--tile-px", str(TILE_PX), "--tile-um", str(TILE_UM), "--no-progress"]
    return subprocess.run(
        [sys.executable, "-c", RUNNER, "extract", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


class Tmpfs:
    """A size-limited tmpfs mounted at ``path``; ``resize`` frees space without losing files."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        path.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            check=True,
            capture_output=True,
        )

    def resize(self, size: int) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(self.path)], check=True, capture_output=True
        )

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.path)], check=False, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path):
    mounted: list[Tmpfs] = []

    def mount(size: int) -> Tmpfs:
        try:
            fs = Tmpfs(tmp_path / f"disk{len(mounted)}", size)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            pytest.skip(f"cannot mount a tmpfs here (needs root, as in CI): {exc}")
        mounted.append(fs)
        return fs

    yield mount
    for fs in mounted:
        fs.unmount()


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    return make_slides(tmp_path_factory.mktemp("fullslides"), n=3)


@pytest.fixture(scope="module")
def reference_run(slides, tmp_path_factory) -> Path:
    """The bags folder of an uninterrupted run on a roomy disk."""
    outdir = tmp_path_factory.mktemp("roomy")
    done = extract(slides, outdir)
    assert done.returncode == 0, done.stderr
    return outdir


@pytest.fixture(scope="module")
def reference(reference_run) -> dict[str, np.ndarray]:
    """Bags of the uninterrupted run: slide -> features."""
    writer = get_writer("pt", reference_run)
    return {slide: writer.read(slide)[0].copy() for slide in writer.slides()}


def bag_bytes(bags_dir: Path) -> list[int]:
    """Bytes on disk of each slide's bag files (features, coordinates, index), by slide."""
    writer = get_writer("pt", bags_dir)
    return [
        sum(path.stat().st_size for path in writer.files(slide))
        for slide in sorted(writer.slides())
    ]


def assert_only_whole_bags(outdir: Path, reference: dict[str, np.ndarray]) -> list[str]:
    """Every bag under a final name equals the uninterrupted run's; no temporaries remain."""
    assert not list(outdir.glob(TMP_PREFIX + "*")), "temporary files were left behind"
    writer = get_writer("pt", outdir)
    present = writer.slides()
    for slide in present:
        features, coords = writer.read(slide)
        np.testing.assert_array_equal(features, reference[slide])
        assert len(coords) == len(features)
    for index in outdir.glob("*.index.npz"):  # no index without its tensor either
        assert index.name.removesuffix(".index.npz") in present
    return present


@pytest.mark.slow
@pytest.mark.parametrize("fill", ["first slide", "third slide"])
def test_a_full_disk_stops_the_run_with_a_clear_error_and_a_rerun_completes(
    tmpfs, slides, reference, reference_run, fill
):
    sizes = bag_bytes(reference_run)
    # Room for the configuration and reports, and for none or two of the bags. A slide being
    # written also has its features in a spill file beside the bags (flat memory), as large as
    # its bag: the second bag needs its own size twice. The third then cannot fit (its bag is
    # larger than the second's plus the slack).
    assert sizes[2] > sizes[1] // 2 + 96 * 1024
    room = 64 * 1024 + (0 if fill == "first slide" else sizes[0] + 2 * sizes[1] + 32 * 1024)
    disk = tmpfs(room)
    outdir = disk.path / "bags"

    full = extract(slides, outdir)
    assert full.returncode == 2, (full.returncode, full.stderr)  # not SIGBUS (-7) nor 1
    assert "Traceback" not in full.stderr
    assert "No space left in" in full.stderr and str(outdir) in full.stderr
    assert "needed" in full.stderr
    present = assert_only_whole_bags(outdir, reference)
    assert len(present) == (0 if fill == "first slide" else 2)
    report_file = outdir / "run_report.json"
    if report_file.exists():  # written atomically, so whole if present at all
        report = json.loads(report_file.read_text())
        assert set(report["slides"]) <= set(reference)

    disk.resize(64 * 1024 * 1024)  # free space
    rerun = extract(slides, outdir)
    assert rerun.returncode == 0, rerun.stderr
    assert assert_only_whole_bags(outdir, reference) == sorted(reference)
    report = json.loads((outdir / "run_report.json").read_text())
    assert report["failed"] == 0
    assert report["skipped"] == len(present)


@pytest.mark.parametrize("writer_name", ["pt", "h5", "safetensors"])
def test_each_bag_writer_reports_a_full_disk_and_leaves_nothing(tmpfs, writer_name):
    disk = tmpfs(64 * 1024)
    writer = get_writer(writer_name, disk.path)
    features = np.ones((200, 200), dtype=np.float32)  # 160 KB: does not fit
    with pytest.raises(StorageError, match="No space left in") as caught:
        writer.write("s", features, np.zeros((200, 2), np.int64), TileGeometry(16, 8.0, 16))
    assert isinstance(caught.value, OSError) and caught.value.errno == 28
    assert caught.value.folder == str(disk.path)
    assert caught.value.needed_bytes >= features.nbytes
    assert list(disk.path.iterdir()) == []


def test_json_on_a_full_disk_keeps_the_old_file(tmpfs):
    disk = tmpfs(16 * 1024)
    target = disk.path / "report.json"
    write_json_atomic(target, {"old": True})
    with pytest.raises(StorageError):
        write_json_atomic(target, {"big": "x" * 64 * 1024})
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in disk.path.iterdir()) == ["report.json"]


def test_a_read_only_folder_is_a_clear_error(tmpfs):
    disk = tmpfs(1024 * 1024)
    subprocess.run(["mount", "-o", "remount,ro", str(disk.path)], check=True)
    writer = get_writer("pt", disk.path)
    with pytest.raises(StorageError, match="read-only"):
        writer.write("s", np.ones((2, 3), np.float32), np.zeros((2, 2)), TileGeometry(16, 8.0, 16))


def test_a_run_that_may_not_fit_warns_before_it_starts(tmpfs, slides):
    disk = tmpfs(256 * 1024)
    with registered(WIDE):
        extractor = histobag.build_feature_extractor("widenet", device="cpu")
    dataset = Dataset(slides, None, TILE_PX, TILE_UM)
    outdir = disk.path / "bags"
    with pytest.warns(LowDiskSpaceWarning, match=r"may need up to .* \(if every grid tile"):
        with pytest.raises(StorageError, match="No space left in"):
            generate_feature_bags(extractor, dataset, outdir, progress=False)
    jobs = [job for _, job in slide_jobs(dataset, "slides", 0)]
    grid = sum(len(WSI(s, TILE_PX, TILE_UM, tissue=None)) for s in sorted(slides.glob("*.svs")))
    assert estimate_bag_bytes(jobs, WIDTH) >= grid * WIDTH * 4  # an upper bound, by design


def test_a_run_that_fits_does_not_warn(tmp_path, slides):
    with registered(WIDE):
        extractor = histobag.build_feature_extractor("widenet", device="cpu")
    dataset = Dataset(slides, None, TILE_PX, TILE_UM)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowDiskSpaceWarning)
        report = generate_feature_bags(extractor, dataset, tmp_path / "bags", progress=False)
    assert not report.warnings and len(report.done) == 3


class SlowFullDisk(CollectSink):
    """A sink whose disk fills while it writes the last slide's bag, late: after the model
    has run every batch, so only the writer thread sees the error."""

    def __init__(self, last: str) -> None:
        super().__init__()
        self.last = last

    def finish(self, result):
        if result.key == self.last:
            time.sleep(0.5)
            raise StorageError(f"No space left in /bags (writing {result.key})")
        super().finish(result)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_full_disk_on_the_last_bag_stops_the_run_like_any_other(slides, num_workers):
    """Whatever slide the disk fills on, the run raises StorageError (the CLI's exit 2, "free
    space and run again"), never ends as if only that slide had failed (exit 1)."""
    jobs = [
        Job(f"slide-{i}", OpenWSI(str(slides / f"slide-{i}.svs"), TILE_PX, TILE_UM, {}))
        for i in range(3)
    ]
    sink = SlowFullDisk("slide-2")
    with registered(PIXELNET):
        extractor = histobag.build_feature_extractor("pixelnet", device="cpu")
        with pytest.raises(StorageError, match="No space left"):
            run(extractor, jobs, sink, batch_size=8, num_workers=num_workers)
    assert set(sink.results) == {"slide-0", "slide-1"}
    assert "No space left" in sink.failures["slide-2"]
