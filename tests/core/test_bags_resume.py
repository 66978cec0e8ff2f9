"""Interruption and bad input: SIGKILL mid-run then resume; broken slides in a dataset."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.core.bag_helpers import TILE_PX, TILE_UM, make_slides

REPO_ROOT = Path(__file__).resolve().parents[2]

EXTRACT = """
import sys
import histobag
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM
histobag.register_plugin(type("P", (), {"histobag_extractors":
    histobag.hookimpl(lambda self: [PIXELNET])})())
fe = histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)
ds = histobag.Dataset(sys.argv[1], tile_px=TILE_PX, tile_um=TILE_UM)
report = ds.generate_feature_bags(fe, sys.argv[2], batch_size=16, num_workers=1,
                                  progress=False)
print("DONE", len(report.done), len(report.skipped))
"""


def _start(slides: Path, outdir: Path, delay: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", EXTRACT, str(slides), str(outdir)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PIXELNET_DELAY": str(delay)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _final_bags(folder: Path) -> list[Path]:
    """Files under a final bag name (temporary files start with a dot)."""
    return sorted(p for p in folder.glob("*.pt") if not p.name.startswith("."))


def _bags(folder: Path) -> dict[str, torch.Tensor]:
    return {p.stem: torch.load(p, weights_only=True) for p in _final_bags(folder)}


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_bags(tmp_path):
    slides = make_slides(tmp_path / "slides", n=4)
    reference = _start(slides, tmp_path / "reference", delay=0.0)
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    expected = _bags(tmp_path / "reference")
    assert len(expected) == 4

    outdir = tmp_path / "interrupted"
    proc = _start(slides, outdir, delay=0.15)
    seen_partial_under_final_name = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not _final_bags(outdir):
        time.sleep(0.05)
    # every file under a final name must already be whole when it appears
    for path in _final_bags(outdir):
        try:
            torch.load(path, weights_only=True)
        except Exception:
            seen_partial_under_final_name.append(path.name)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before = set(_bags(outdir))
    assert 1 <= len(done_before) < 4, "the kill should land mid-run"
    assert not seen_partial_under_final_name
    for name, tensor in _bags(outdir).items():  # whatever survived the kill is whole
        assert torch.equal(tensor, expected[name])

    resumed = _start(slides, outdir, delay=0.0)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert out.strip().endswith(f"DONE {4 - len(done_before)} {len(done_before)}")
    got = _bags(outdir)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert not list(outdir.glob(".histobag-tmp-*"))


@pytest.mark.slow
def test_bad_slides_are_reported_and_the_cli_exits_non_zero(tmp_path):
    slides = make_slides(tmp_path / "slides", n=2, bad=True)
    outdir = tmp_path / "bags"
    proc = subprocess.run(
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
            "--writer",
            "h5",
            "--workers",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    report = json.loads((outdir / "run_report.json").read_text())
    statuses = {name: s["status"] for name, s in report["slides"].items()}
    assert statuses == {
        "slide-0": "done",
        "slide-1": "done",
        "unreadable": "failed",
        "unopenable": "failed",
    }
    assert "Bogus marker" in report["slides"]["unreadable"]["reason"]
    assert "Unsupported TIFF compression" in report["slides"]["unopenable"]["reason"]
    assert "unreadable" in proc.stdout and "FAILED" in proc.stdout
    assert "2 slide(s) failed" in proc.stderr
    assert sorted(p.name for p in outdir.glob("*.h5")) == ["slide-0.h5", "slide-1.h5"]
