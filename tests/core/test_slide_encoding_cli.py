"""``histobag extract --slide-encoder``: slides → tile bags → slide embeddings and their
table, in one command; killed with SIGKILL mid-run, it resumes and skips finished slides."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from histobag.bags.read import read_bag
from histobag.slide_encoding import read_table
from histobag.slide_encoding.pipeline import EMBEDDINGS_CONFIG
from tests.core.bag_helpers import make_slides

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The command line with the toy models registered (a test-only pack, in-process).
CLI = """
import sys
import histobag
from histobag.cli import main
from tests.core.slide_encoder_toys import TOY_SPECS
histobag.register_plugin(type("P", (), {"histobag_extractors":
    histobag.hookimpl(lambda self: list(TOY_SPECS))})())
sys.exit(main(sys.argv[1:]))
"""


def _extract(slides: Path, outdir: Path, *extra: str, delay: float = 0.0) -> subprocess.Popen:
    args = ["extract", "--slide-encoder", "toyslide", "--slides", str(slides)]
    args += ["--outdir", str(outdir), "--workers", "0", "--no-progress", *extra]
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "TOYSLIDE_DELAY": str(delay)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _embeddings(folder: Path) -> dict[str, torch.Tensor]:
    return {
        p.stem: torch.load(p, weights_only=True)
        for p in sorted(folder.glob("*.pt"))
        if not p.name.startswith(".")
    }


@pytest.mark.slow
def test_one_command_from_slides_to_slide_embeddings_resumes_after_sigkill(tmp_path):
    slides = make_slides(tmp_path / "slides", n=2)
    reference = _extract(slides, tmp_path / "reference")
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    bags = tmp_path / "reference" / "bags" / "pixelnet"
    embeddings = tmp_path / "reference" / "slide_embeddings" / "toyslide"
    expected = _embeddings(embeddings)
    assert sorted(expected) == ["slide-0", "slide-1"]
    assert "2 slide(s) embedded" in out
    # the tile bags are pixelnet's at the model's geometry; the table holds every slide
    config = json.loads((bags / "bags_config.json").read_text())
    assert (config["extractor"]["extractor"], config["tile_px"], config["tile_um"]) == (
        "pixelnet",
        16,
        "20x",
    )
    names, table = read_table(embeddings / "slide_embeddings.h5")
    assert names == ["slide-0", "slide-1"]
    for i, name in enumerate(names):
        assert np.array_equal(table[i], expected[name].numpy())
        features, _coords, _ = read_bag(bags, name)
        assert len(features) > 50
    recorded = json.loads((embeddings / EMBEDDINGS_CONFIG).read_text())
    assert recorded["slide_encoder"]["extractor"] == "toyslide"
    assert recorded["bags_check"]["forced"] is False

    # Killed while embedding the first slide (its bags are done): nothing half-written.
    outdir = tmp_path / "interrupted"
    proc = _extract(slides, outdir, delay=3.0)
    target = outdir / "slide_embeddings" / "toyslide"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (target / "slide_embeddings_config.json").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _embeddings(target) == {}  # the kill landed before any embedding was whole

    resumed = _extract(slides, outdir)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "0 done, 2 skipped" in out  # the bags were reused
    assert "2 slide(s) embedded, 0 already done" in out
    got = _embeddings(target)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert not list(target.glob(".histobag-tmp-*"))

    again = _extract(slides, outdir)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "0 slide(s) embedded, 2 already done" in out


@pytest.mark.slow
def test_options_that_contradict_the_slide_encoder_are_refused(tmp_path):
    slides = make_slides(tmp_path / "slides", n=1)
    proc = _extract(slides, tmp_path / "out", "--tile-um", "10x")
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "needs 20x" in err and "--force" in err
    assert not (tmp_path / "out" / "bags").exists()
    proc = _extract(slides, tmp_path / "out", "--extractor", "othernet", "--force")
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "warning: forced" in err and "othernet" in err
    assert (tmp_path / "out" / "slide_embeddings" / "toyslide" / "slide-0.pt").is_file()
