"""Files histobag writes get the mode a plain ``open()`` would give them (0666 less the umask),
not the private 0600 of the temporaries they are written under: bags on a shared folder must
be readable by the group that shares it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import histobag
from histobag.files import AtomicFile, create_exclusive, write_bytes_atomic, write_json_atomic
from tests.core.bag_helpers import PIXELNET, TILE_PX, TILE_UM, make_slides
from tests.core.toy_models import registered


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_every_way_of_writing_a_file_honours_the_umask(tmp_path, mask):
    expected = 0o666 & ~mask
    with umask(mask):
        written = [
            write_bytes_atomic(tmp_path / "a.bin", b"x"),
            write_json_atomic(tmp_path / "b.json", {"a": 1}),
        ]
        stream = AtomicFile(tmp_path / "c.tfrecords")
        assert stream.handle is not None
        stream.handle.write(b"data")
        written.append(stream.commit())
        assert create_exclusive(tmp_path / "d.claim", b"owner")
        written.append(tmp_path / "d.claim")
    for path in written:
        assert mode(path) == expected, (path.name, oct(mode(path)), oct(expected))


def test_a_bags_folder_is_readable_by_the_group_under_a_shared_umask(tmp_path):
    slides = make_slides(tmp_path / "slides", n=1)
    with registered(PIXELNET), umask(0o002):
        extractor = histobag.build_feature_extractor("pixelnet", device="cpu")
        dataset = histobag.Dataset(slides, None, TILE_PX, TILE_UM)
        report = dataset.generate_feature_bags(
            extractor, tmp_path / "bags", num_workers=0, progress=False
        )
    assert report.ok
    files = [p for p in (tmp_path / "bags").rglob("*") if p.is_file()]
    assert any(p.name == "bags_config.json" for p in files)
    assert any(p.suffix in (".pt", ".h5") for p in files)
    for path in files:
        assert mode(path) == 0o664, (path.name, oct(mode(path)))
