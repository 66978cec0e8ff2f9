"""Cluster runs end to end: many processes (plain, torchrun) on one --outdir, deaths, stalls.

Every bag must be written exactly once and equal a single-process run's; no partial file may
ever be visible under a final name; a rerun afterwards does nothing but report.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from histobag.bags.claims import CLAIMS_DIR
from histobag.bags.report import read_process_reports
from histobag.files import TMP_PREFIX
from tests.core.bag_helpers import TILE_PX, TILE_UM, make_slides

REPO_ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")

#: ``histobag`` with the tests' tiny ``pixelnet`` model registered (PIXELNET_DELAY slows it).
RUNNER = """\
import sys
import histobag
from tests.core.bag_helpers import PIXELNET
histobag.register_plugin(type("P", (), {"histobag_extractors":
    histobag.hookimpl(lambda self: [PIXELNET])})())
from histobag.cli import main
sys.exit(main(sys.argv[1:]))
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """12 slides, the runner script, and a single-process reference run's bags."""
    root = tmp_path_factory.mktemp("cohort")
    slides = make_slides(root / "slides", n=12)
    runner = root / "runner.py"
    runner.write_text(RUNNER)
    reference = root / "reference"
    proc = _start(runner, slides, reference)
    _out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return {"slides": slides, "runner": runner, "reference": _bags(reference)}


def _args(slides: Path, outdir: Path, *extra: str) -> list[str]:
    return [
        "extract",
        "--extractor",
        "pixelnet",
        "--slides",
        str(slides),
        "--outdir",
        str(outdir),
        "--tile-px",
        str(TILE_PX),
        "--tile-um",
        str(TILE_UM),
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def _env(delay: float) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PIXELNET_DELAY": str(delay)}


def _start(
    runner: Path, slides: Path, outdir: Path, *extra: str, delay: float = 0.0
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(runner), *_args(slides, outdir, *extra)],
        cwd=REPO_ROOT,
        env=_env(delay),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _final_bags(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.pt") if not p.name.startswith("."))


def _bags(folder: Path) -> dict[str, tuple[torch.Tensor, dict[str, np.ndarray]]]:
    out = {}
    for pt in _final_bags(folder):
        with np.load(folder / f"{pt.stem}.index.npz") as index:
            out[pt.stem] = (torch.load(pt, weights_only=True), dict(index))
    return out


def _assert_same_bags(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, (features, index) in expected.items():
        assert torch.equal(got[name][0], features), name  # bit for bit
        assert got[name][1].keys() == index.keys()
        for key in index:
            assert np.array_equal(got[name][1][key], index[key]), (name, key)


def _done_per_slide(outdir: Path) -> dict[str, int]:
    """How many processes wrote each slide's bag, from every process's own report."""
    counts: dict[str, int] = {}
    for part in read_process_reports(outdir):
        for name, info in part["report"]["slides"].items():
            if info["status"] == "done":
                counts[name] = counts.get(name, 0) + 1
    return counts


def _stamps(outdir: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of every bag file: a rewrite changes both."""
    files = list(outdir.glob("*.pt")) + list(outdir.glob("*.index.npz"))
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


def _claims_left(outdir: Path) -> list[str]:
    """Claims still on file (a killed process's half-made temporaries are not claims)."""
    return [
        p.name for p in (outdir / CLAIMS_DIR).glob("*.claim") if not p.name.startswith(TMP_PREFIX)
    ]


def _watch_for_partial_files(outdir: Path, procs: list[subprocess.Popen]) -> list[str]:
    """Until the processes end: every file under a final bag name must read back whole."""
    partial = []
    while any(p.poll() is None for p in procs):
        for path in _final_bags(outdir):
            try:
                torch.load(path, weights_only=True)
            except FileNotFoundError:
                continue
            except Exception:
                partial.append(path.name)
        time.sleep(0.05)
    return partial


def _holds_a_claim(outdir: Path, pid: int) -> bool:
    for path in (outdir / CLAIMS_DIR).glob("*.claim"):
        try:
            if json.loads(path.read_text())["pid"] == pid:
                return True
        except (OSError, ValueError):
            continue
    return False


def _rerun_does_nothing(cohort: dict, outdir: Path) -> None:
    before = _stamps(outdir)
    proc = _start(cohort["runner"], cohort["slides"], outdir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "0 done, 12 skipped, 0 failed" in out
    assert _stamps(outdir) == before


def test_three_processes_on_one_outdir_write_each_bag_once(cohort, tmp_path):
    outdir = tmp_path / "bags"
    procs = [_start(cohort["runner"], cohort["slides"], outdir, delay=0.01) for _ in range(3)]
    partial = _watch_for_partial_files(outdir, procs)
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "12 done, 0 skipped, 0 failed" in out  # every process prints the whole run
    assert not partial
    _assert_same_bags(_bags(outdir), cohort["reference"])
    assert _done_per_slide(outdir) == {name: 1 for name in cohort["reference"]}
    report = json.loads((outdir / "run_report.json").read_text())
    assert report["processes"] == 3 and report["done"] == 12
    assert {s["status"] for s in report["slides"].values()} == {"done"}
    assert sum(p["done"] for p in report["process_reports"]) == 12
    assert not _claims_left(outdir)
    assert not list(outdir.glob(".histobag-tmp-*"))
    _rerun_does_nothing(cohort, outdir)


def test_sigkill_of_a_process_holding_a_claim_loses_nothing(cohort, tmp_path):
    outdir = tmp_path / "bags"
    victim = _start(cohort["runner"], cohort["slides"], outdir, delay=0.05)
    deadline = time.monotonic() + 120
    while not _holds_a_claim(outdir, victim.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    others = [_start(cohort["runner"], cohort["slides"], outdir, delay=0.05) for _ in range(2)]
    while not _done_per_slide(outdir) and time.monotonic() < deadline:
        time.sleep(0.05)
    while not _holds_a_claim(outdir, victim.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _holds_a_claim(outdir, victim.pid)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    partial = _watch_for_partial_files(outdir, others)
    for proc in others:
        _out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    assert not partial
    _assert_same_bags(_bags(outdir), cohort["reference"])
    assert _done_per_slide(outdir) == {name: 1 for name in cohort["reference"]}
    assert not _claims_left(outdir)
    _rerun_does_nothing(cohort, outdir)


def test_a_stalled_process_loses_its_claim_after_the_timeout(cohort, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("slide-0", "slide-1", "slide-2"):
        shutil.copy(cohort["slides"] / f"{name}.svs", slides)
    outdir = tmp_path / "bags"
    timeout = ("--claim-timeout", "2")
    stalled = _start(cohort["runner"], slides, outdir, *timeout, delay=0.05)
    deadline = time.monotonic() + 120
    while not _holds_a_claim(outdir, stalled.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(stalled.pid, signal.SIGSTOP)  # alive but silent: only the timeout frees its slide
    try:
        other = _start(cohort["runner"], slides, outdir, *timeout, delay=0.0)
        out, err = other.communicate(timeout=300)
        assert other.returncode == 0, err
        assert "Taking over the claim" in err and "no heartbeat" in err
        assert "3 done" in out or "3 done" in (outdir / "run_report.json").read_text()
    finally:
        os.killpg(stalled.pid, signal.SIGCONT)
    out, err = stalled.communicate(timeout=300)
    assert stalled.returncode == 0, err
    expected = {
        k: v for k, v in cohort["reference"].items() if k in ("slide-0", "slide-1", "slide-2")
    }
    _assert_same_bags(_bags(outdir), expected)
    assert _done_per_slide(outdir) == dict.fromkeys(expected, 1)  # the stalled one wrote none twice


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is installed with torch")
def test_torchrun_two_ranks_give_the_single_process_bags(cohort, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    names = [f"slide-{i}" for i in range(6)]
    for name in names:
        shutil.copy(cohort["slides"] / f"{name}.svs", slides)
    outdir = tmp_path / "bags"
    proc = subprocess.run(
        [str(TORCHRUN), "--nproc-per-node=2", str(cohort["runner"]), *_args(slides, outdir)],
        cwd=REPO_ROOT,
        env=_env(0.01),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    _assert_same_bags(_bags(outdir), {n: cohort["reference"][n] for n in names})
    report = json.loads((outdir / "run_report.json").read_text())
    assert sorted(report["slides"]) == names
    assert [s["status"] for s in report["slides"].values()] == ["done"] * 6
    assert sorted(p["rank"] for p in report["process_reports"]) == [0, 1]
    assert _done_per_slide(outdir) == dict.fromkeys(names, 1)
    assert "6 done, 0 skipped, 0 failed" in proc.stdout


def test_sigterm_releases_the_claims_at_once(cohort, tmp_path):
    """SLURM preemption and torchrun send SIGTERM: the slide in flight is handed back, not
    failed, so the next process takes it without waiting for the timeout."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("slide-0", "slide-1"):
        shutil.copy(cohort["slides"] / f"{name}.svs", slides)
    outdir = tmp_path / "bags"
    proc = _start(cohort["runner"], slides, outdir, delay=0.05)
    deadline = time.monotonic() + 120
    while not _holds_a_claim(outdir, proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert not _claims_left(outdir)
    assert not list((outdir / CLAIMS_DIR).rglob("*.json"))  # no failure noted for others
    assert not list(outdir.glob(".histobag-tmp-*"))
    rerun = _start(cohort["runner"], slides, outdir, "--claim-timeout", "3600")
    _out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    _assert_same_bags(_bags(outdir), {n: cohort["reference"][n] for n in ("slide-0", "slide-1")})
