"""Bag integrity: sha256 recorded as bags are written, verify, and resume against the record."""

import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import histobag
from histobag.bags.manifest import (
    JOURNAL_DIR,
    MANIFEST_NAME,
    compact_manifest,
    read_manifest,
    record_bags,
    verify_bags,
)
from histobag.errors import ConfigError
from histobag.io.bag_writers import get_writer
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return make_slides(tmp_path_factory.mktemp("integrityslides"), n=2)


@pytest.fixture
def extractor():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


def _run(slides, extractor, outdir, **kwargs):
    dataset = histobag.Dataset(slides, tile_px=TILE_PX, tile_um=TILE_UM)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("num_workers", 0)
    return histobag.generate_feature_bags(extractor, dataset, outdir, **kwargs)


def _manifest(outdir: Path) -> dict:
    return json.loads((outdir / MANIFEST_NAME).read_text())


def _flip_one_bit_in_the_features(pt: Path) -> None:
    """Same size, still loads: the silent corruption a size check cannot see."""
    features = torch.load(pt, weights_only=True).numpy()
    raw = bytearray(pt.read_bytes())
    at = raw.find(features.tobytes())
    assert at > 0
    raw[at + 5] ^= 0x10
    size = pt.stat().st_size
    pt.write_bytes(bytes(raw))
    assert pt.stat().st_size == size
    assert not np.array_equal(torch.load(pt, weights_only=True).numpy(), features)


def test_each_bag_is_recorded_with_its_sha256_as_it_is_written(slides, extractor, tmp_path):
    report = _run(slides, extractor, tmp_path)
    manifest = _manifest(tmp_path)
    assert manifest["format"] == "histobag-bags-manifest" and manifest["algorithm"] == "sha256"
    assert set(manifest["bags"]) == {"slide-0", "slide-1"}
    for slide, entry in manifest["bags"].items():
        assert entry["tiles"] == report.done[slide]
        assert set(entry["files"]) == {f"{slide}.index.npz", f"{slide}.pt"}
        for name, rec in entry["files"].items():
            data = (tmp_path / name).read_bytes()
            assert rec == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert "adopted" not in entry
    result = verify_bags(tmp_path)
    assert result.ok and result.verified == ["slide-0", "slide-1"]
    assert result.bytes_checked == sum(
        rec["bytes"] for e in manifest["bags"].values() for rec in e["files"].values()
    )


def test_same_size_bit_flip_is_found_by_verify_and_redone_by_a_verifying_resume(
    slides, extractor, tmp_path
):
    first = _run(slides, extractor, tmp_path)
    pt = tmp_path / "slide-0.pt"
    original = pt.read_bytes()
    _flip_one_bit_in_the_features(pt)

    result = verify_bags(tmp_path)
    assert not result.ok
    assert result.damaged == {
        "slide-0": "slide-0.pt has changed since it was written (sha256 differs)"
    }
    assert result.verified == ["slide-1"]

    # A plain resume compares sizes only (no reading): the flip is not seen, as documented.
    plain = _run(slides, extractor, tmp_path)
    assert set(plain.skipped) == {"slide-0", "slide-1"} and not plain.redone

    fixed = _run(slides, extractor, tmp_path, verify=True)
    assert set(fixed.done) == {"slide-0"} and set(fixed.skipped) == {"slide-1"}
    assert "sha256 differs" in fixed.redone["slide-0"]
    assert fixed.done["slide-0"] == first.done["slide-0"]
    assert pt.read_bytes() == original  # the same model gives the same bag back
    assert verify_bags(tmp_path).ok
    saved = json.loads((tmp_path / "run_report.json").read_text())
    assert "sha256 differs" in saved["slides"]["slide-0"]["redone"]


def test_a_bag_whose_size_differs_from_the_record_is_redone(slides, extractor, tmp_path):
    _run(slides, extractor, tmp_path)
    pt = tmp_path / "slide-1.pt"
    original = pt.read_bytes()
    with open(pt, "ab") as handle:  # still loads: torch reads the zip from its end
        handle.write(b"\0" * 7)
    assert get_writer("pt", tmp_path).is_complete("slide-1")

    size_changed = f"slide-1.pt is {len(original) + 7} bytes, recorded {len(original)}"
    assert verify_bags(tmp_path).damaged == {"slide-1": size_changed}
    second = _run(slides, extractor, tmp_path)
    assert set(second.done) == {"slide-1"} and set(second.skipped) == {"slide-0"}
    assert second.redone == {"slide-1": size_changed}
    assert pt.read_bytes() == original
    assert verify_bags(tmp_path).ok


def test_a_bag_without_a_record_in_a_recorded_folder_is_redone(slides, extractor, tmp_path):
    _run(slides, extractor, tmp_path)
    manifest = _manifest(tmp_path)
    del manifest["bags"]["slide-0"]  # as if killed between the rename and the record
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert verify_bags(tmp_path).unrecorded == ["slide-0"]

    second = _run(slides, extractor, tmp_path)
    assert set(second.done) == {"slide-0"} and "not recorded" in second.redone["slide-0"]
    assert verify_bags(tmp_path).ok


def test_bags_from_an_older_histobag_are_skipped_and_recorded(slides, extractor, tmp_path):
    first = _run(slides, extractor, tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()  # written before manifests existed
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("slide-*")}
    with pytest.raises(ConfigError, match=r"no bags_manifest\.json"):
        verify_bags(tmp_path)

    second = _run(slides, extractor, tmp_path)
    assert second.skipped == first.done and not second.done and not second.redone
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("slide-*")} == mtimes
    entries = _manifest(tmp_path)["bags"]
    assert set(entries) == {"slide-0", "slide-1"}
    assert all(e["adopted"] is True for e in entries.values())
    assert verify_bags(tmp_path).ok


def test_missing_bags_and_overwrite(slides, extractor, tmp_path):
    _run(slides, extractor, tmp_path)
    (tmp_path / "slide-1.pt").unlink()
    (tmp_path / "slide-1.index.npz").unlink()
    (tmp_path / "slide-0.index.npz").unlink()
    result = verify_bags(tmp_path)
    assert result.missing == {"slide-1": "slide-1.index.npz, slide-1.pt gone"}
    assert result.damaged == {"slide-0": "slide-0.index.npz is missing"}
    assert "MISSING  slide-1" in result.summary() and "DAMAGED  slide-0" in result.summary()

    _run(slides, extractor, tmp_path, normalizer="reinhard", overwrite=True)
    assert set(_manifest(tmp_path)["bags"]) == {"slide-0", "slide-1"}
    assert verify_bags(tmp_path).ok


def test_a_damaged_bag_is_removed_even_when_it_cannot_be_redone(slides, extractor, tmp_path):
    _run(slides, extractor, tmp_path)
    with open(tmp_path / "slide-0.pt", "ab") as handle:
        handle.write(b"\0")
    # The same slides, now without their files: nothing can be extracted again.
    annotated = pd.DataFrame({"slide": ["slide-0", "slide-1"]})
    dataset = histobag.Dataset(annotations=annotated, tile_px=TILE_PX, tile_um=TILE_UM)
    report = histobag.generate_feature_bags(
        extractor, dataset, tmp_path, progress=False, num_workers=0
    )
    assert set(report.skipped) == {"slide-1"}
    assert report.failed == {"slide-0": "no slide file or TFRecord found for this slide"}
    assert "slide-0.pt is" in report.redone["slide-0"]
    assert not (tmp_path / "slide-0.pt").exists()  # a bag exists only when it is whole
    assert verify_bags(tmp_path).missing == {"slide-0": "slide-0.index.npz, slide-0.pt gone"}


def test_a_tampered_manifest_is_refused_and_cannot_point_outside(slides, extractor, tmp_path):
    _run(slides, extractor, tmp_path)
    manifest = _manifest(tmp_path)
    manifest["bags"]["slide-0"]["files"] = {"../../etc/passwd": {"bytes": 1, "sha256": "0"}}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert "is not a file name in this folder" in verify_bags(tmp_path).damaged["slide-0"]
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="not a bags manifest"):
        verify_bags(tmp_path)
    with pytest.raises(ConfigError, match="not a bags manifest"):
        _run(slides, extractor, tmp_path)


def _record_many(outdir: str, worker: int) -> None:
    for i in range(15):
        path = Path(outdir) / f"w{worker}-{i}.bin"
        path.write_bytes(bytes([worker, i]) * 100)
        record_bags(outdir, {path.stem: ([path], i)})
    if worker % 2 == 0:  # ends normally; the odd workers die before folding their journal in
        compact_manifest(outdir)


def test_processes_sharing_a_folder_keep_each_others_records(tmp_path):
    context = multiprocessing.get_context("fork")  # fork: no re-import of torch per process
    procs = [context.Process(target=_record_many, args=(str(tmp_path), w)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    assert len(_manifest(tmp_path)["bags"]) == 30  # folded in by the workers that ended
    entries = read_manifest(tmp_path)  # the dead workers' journals are read too
    assert len(entries) == 60
    assert entries["w3-14"]["files"]["w3-14.bin"]["bytes"] == 200
    for journal in (tmp_path / JOURNAL_DIR).iterdir():  # an hour later, a run folds them in
        os.utime(journal, (time.time() - 7200,) * 2)
    compact_manifest(tmp_path)
    assert _manifest(tmp_path)["bags"] == entries
    assert not list((tmp_path / JOURNAL_DIR).iterdir())


def test_a_torn_journal_line_is_a_missing_record_not_a_wrong_one(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 10)
    record_bags(tmp_path, {"a": ([path], 1)})
    (journal,) = (tmp_path / JOURNAL_DIR).iterdir()
    with open(journal, "ab") as handle:
        handle.write(b'{"slide": "b", "entry": {"tiles": 2, "fi')  # killed mid-write
    assert set(read_manifest(tmp_path)) == {"a"}
