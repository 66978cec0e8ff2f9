"""Fuzzing TFRecords and their indexes: every damaged pair is read exactly or refused by name.

A small TFRecord and its ``.index.npz`` are damaged in 500 seeded ways (byte flips, truncations
at random offsets and at record boundaries, appended records, edited, dropped, added and swapped
index rows, damaged index dtypes, shapes, keys and bytes). Each case is read the way the engine
reads it (``OpenTFRecord()`` in a worker, then ``read_tiles`` in batches) and must either give
exactly the original tiles and locations, in order and all of them, or raise a
``HistobagError`` whose message names the file. A sample of cases also goes through
``extractor("x.tfrecords")``.

Not fuzzed: a file truncated exactly at a record boundary *without* an index, which cannot be
told from a file written shorter (``TFRecordReader`` documents this).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import histobag
from histobag.errors import HistobagError
from histobag.io.images import encode_image
from histobag.io.tfrecord import TFRecordWriter, frame_record, index_path, read_index
from histobag.tile_readers import OpenTFRecord
from tests.core.bag_helpers import PIXELNET
from tests.core.toy_models import registered

N_CASES = 500
N_RECORDS = 9
BATCH = 4  # read in batches, as the engine does, so a batch boundary falls inside the file


class Case:
    """A TFRecord's bytes and its index (arrays to save, raw bytes, or None for no index)."""

    def __init__(self, data: bytes, index: dict[str, np.ndarray] | bytes | None) -> None:
        self.data = data
        self.index = index

    def arrays(self) -> dict[str, np.ndarray]:
        assert isinstance(self.index, dict)
        return self.index

    def write(self, path: Path) -> None:
        path.write_bytes(self.data)
        idx = index_path(path)
        if self.index is None:
            idx.unlink(missing_ok=True)
        elif isinstance(self.index, bytes):
            idx.write_bytes(self.index)
        else:
            buffer = io.BytesIO()
            np.savez(buffer, **self.index)
            idx.write_bytes(buffer.getvalue())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict:
    """A TFRecord of 9 JPEG tiles of 20 px, its index, and what reading it gives."""
    rng = np.random.default_rng(2024)
    path = tmp_path_factory.mktemp("fuzz") / "pristine.tfrecords"
    with TFRecordWriter(path) as writer:
        for i in range(N_RECORDS):
            tile = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            # Locations of varied varint sizes, one negative, like real tile centres.
            x, y = int(rng.integers(0, 2**20)), int(rng.integers(-300, 2**30))
            writer.write_tile("slide", encode_image(tile, "jpg", 90), x, y + i)
    offsets, locations = read_index(index_path(path))
    source, top_left, _ = OpenTFRecord(str(path))()
    tiles = source.read_tiles(np.arange(N_RECORDS))
    source.close()
    np.testing.assert_array_equal(top_left, locations)
    index = {"arr_0": offsets, "locations": locations}
    return {"data": path.read_bytes(), "index": index, "tiles": tiles, "locations": locations}


# ------------------------------------------------------------------------------------------
# Mutations: each takes (case, rng, pristine) and damages the case in place.
# ------------------------------------------------------------------------------------------


def _row(rng: np.random.Generator, case: Case | None = None) -> int:
    """A random row of the pristine file, or of the case's index (rows may have been dropped)."""
    n = N_RECORDS if case is None else len(case.arrays()["arr_0"])
    return int(rng.integers(n))


def _delta(rng: np.random.Generator) -> int:
    return int(rng.choice([-1, 1])) * int(rng.choice([1, 2, 4, 16, 100, 2**20]))


def flip(case: Case, rng: np.random.Generator, _: dict) -> None:
    data = bytearray(case.data)
    for _i in range(int(rng.integers(1, 4))):
        data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
    case.data = bytes(data)


def truncate(case: Case, rng: np.random.Generator, _: dict) -> None:
    case.data = case.data[: int(rng.integers(len(case.data)))]


def truncate_at_boundary(case: Case, rng: np.random.Generator, p: dict) -> None:
    case.data = case.data[: int(p["index"]["arr_0"][_row(rng), 0])]


def append_record(case: Case, rng: np.random.Generator, p: dict) -> None:
    start, length = p["index"]["arr_0"][_row(rng)]
    case.data += p["data"][int(start) : int(start + length)]


def append_garbage(case: Case, rng: np.random.Generator, _: dict) -> None:
    extra = rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes()
    case.data += frame_record(extra) if rng.random() < 0.5 else extra


def edit_offset(case: Case, rng: np.random.Generator, _: dict) -> None:
    case.arrays()["arr_0"][_row(rng, case), int(rng.integers(2))] += _delta(rng)


def edit_location(case: Case, rng: np.random.Generator, _: dict) -> None:
    case.arrays()["locations"][_row(rng, case), int(rng.integers(2))] += _delta(rng)


def drop_row(case: Case, rng: np.random.Generator, _: dict) -> None:
    i = _row(rng, case) if rng.random() < 0.5 else -1  # the last row: "index too short"
    for key in ("arr_0", "locations"):
        case.arrays()[key] = np.delete(case.arrays()[key], i, axis=0)


def add_row(case: Case, rng: np.random.Generator, _: dict) -> None:
    arrays = case.arrays()
    i = _row(rng, case)
    if rng.random() < 0.5:  # a plausible next record after the last one
        last = arrays["arr_0"][-1]
        row, loc = [last[0] + last[1], last[1]], arrays["locations"][i]
    else:
        row, loc = arrays["arr_0"][i], arrays["locations"][i]
    at = int(rng.integers(len(arrays["arr_0"]) + 1))
    arrays["arr_0"] = np.insert(arrays["arr_0"], at, row, axis=0)
    arrays["locations"] = np.insert(arrays["locations"], at, loc, axis=0)


def swap_rows(case: Case, rng: np.random.Generator, _: dict) -> None:
    i, j = rng.choice(len(case.arrays()["arr_0"]), 2, replace=False)
    keys = [("arr_0", "locations"), ("arr_0",), ("locations",)][int(rng.integers(3))]
    for key in keys:
        case.arrays()[key][[i, j]] = case.arrays()[key][[j, i]]


def damage_dtype(case: Case, rng: np.random.Generator, _: dict) -> None:
    key = ["arr_0", "locations"][int(rng.integers(2))]
    kind = ["float64", "int32", "uint8", "int16", "str", "bool", "complex"][int(rng.integers(7))]
    array = case.arrays()[key]
    case.arrays()[key] = array.astype(str) if kind == "str" else array.astype(kind)


def damage_shape(case: Case, rng: np.random.Generator, _: dict) -> None:
    key = ["arr_0", "locations"][int(rng.integers(2))]
    array = case.arrays()[key]
    shapes: list[Callable[[np.ndarray], np.ndarray]] = [
        lambda a: a.reshape(-1),
        lambda a: a.T.copy(),
        lambda a: np.concatenate([a, a[:, :1]], axis=1),
        lambda a: a[:, :1].copy(),
        lambda a: a[None],
        lambda a: np.asarray(a[0, 0]),
    ]
    case.arrays()[key] = shapes[int(rng.integers(len(shapes)))](array)


def drop_key(case: Case, rng: np.random.Generator, _: dict) -> None:
    del case.arrays()[["arr_0", "locations"][int(rng.integers(2))]]


def _index_bytes(case: Case) -> bytes:
    if isinstance(case.index, bytes):  # already damaged as bytes
        return case.index
    buffer = io.BytesIO()
    np.savez(buffer, **case.arrays())
    return buffer.getvalue()


def flip_index_bytes(case: Case, rng: np.random.Generator, _: dict) -> None:
    raw = bytearray(_index_bytes(case))
    for _i in range(int(rng.integers(1, 3))):
        raw[int(rng.integers(len(raw)))] ^= int(rng.integers(1, 256))
    case.index = bytes(raw)


def truncate_index_bytes(case: Case, rng: np.random.Generator, _: dict) -> None:
    raw = _index_bytes(case)
    case.index = raw[: int(rng.integers(len(raw)))]


def no_index_flip(case: Case, rng: np.random.Generator, p: dict) -> None:
    case.index = None
    flip(case, rng, p)


def no_index_truncate_inside_a_record(case: Case, rng: np.random.Generator, p: dict) -> None:
    case.index = None
    start, length = p["index"]["arr_0"][_row(rng)]
    case.data = case.data[: int(start + rng.integers(1, length))]


def no_change(case: Case, rng: np.random.Generator, _: dict) -> None:
    """The control: an untouched pair must read exactly."""


def combined(case: Case, rng: np.random.Generator, p: dict) -> None:
    first, second = rng.choice(len(SINGLE), 2, replace=False)
    for k in sorted((first, second)):  # file mutations before index-bytes ones
        SINGLE[k](case, rng, p)


SINGLE = [
    flip,
    truncate,
    truncate_at_boundary,
    append_record,
    append_garbage,
    edit_offset,
    edit_location,
    drop_row,
    add_row,
    swap_rows,
    damage_dtype,
    damage_shape,
    drop_key,
    flip_index_bytes,
    truncate_index_bytes,
]
MUTATIONS = [*SINGLE, no_index_flip, no_index_truncate_inside_a_record, no_change, combined]
# Kinds after which reading the original tiles and locations is impossible.
ALWAYS_REFUSED = {
    "flip",
    "truncate",
    "truncate_at_boundary",
    "append_record",
    "append_garbage",
    "edit_offset",
    "edit_location",
    "drop_row",
    "add_row",
    "no_index_flip",
    "no_index_truncate_inside_a_record",
    "swap_rows",
}


def read_like_the_engine(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(tiles, locations) through ``OpenTFRecord`` and ``read_tiles`` in batches."""
    source, top_left, _ = OpenTFRecord(str(path))()
    try:
        batches = [
            source.read_tiles(np.arange(s, min(s + BATCH, len(source))), return_mask=True)[0]
            for s in range(0, len(source), BATCH)
        ]
    finally:
        source.close()
    tiles = np.concatenate(batches) if batches else np.zeros((0, 20, 20, 3), np.uint8)
    np.testing.assert_array_equal(top_left, source.reader.locations)
    return tiles, top_left


def check(path: Path, pristine: dict, read: Callable[[Path], tuple]) -> str:
    """'read' when the result is exactly the original, 'refused' for an error naming the file;
    anything else fails the test."""
    try:
        tiles, locations = read(path)
    except HistobagError as exc:
        message = str(exc)
    else:
        message = None
    if message is not None:
        first_line = message.splitlines()[0]  # what a run report shows
        assert path.name in first_line, f"error does not name {path.name}: {message}"
        return "refused"
    assert len(tiles) == len(locations) == N_RECORDS, "a wrong number of records came back silently"
    np.testing.assert_array_equal(np.asarray(locations), pristine["locations"])
    expected = pristine.get("features", pristine["tiles"])
    np.testing.assert_array_equal(np.asarray(tiles), expected)
    return "read"


@pytest.fixture(scope="module")
def extractor():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


def test_500_damaged_tfrecords_are_read_exactly_or_refused_by_name(pristine, extractor, tmp_path):
    def through_extractor(path: Path) -> tuple:
        features, coords = extractor(str(path), batch_size=BATCH, num_workers=0)
        return features.numpy(), coords.numpy()

    path = tmp_path / "fuzzed.tfrecords"
    Case(pristine["data"], None).write(path)
    reference = {**pristine, "features": through_extractor(path)[0]}

    rng = np.random.default_rng(20240611)
    outcomes: Counter[tuple[str, str]] = Counter()
    for k in range(N_CASES):
        mutation = MUTATIONS[k % len(MUTATIONS)]
        case = Case(pristine["data"], {key: a.copy() for key, a in pristine["index"].items()})
        mutation(case, rng, pristine)
        case.write(path)
        try:
            outcome = check(path, pristine, read_like_the_engine)
            if k % 10 == 0:  # the full path of extractor("x.tfrecords"), on a sample
                assert check(path, reference, through_extractor) == outcome
        except AssertionError as exc:
            raise AssertionError(f"case {k} ({mutation.__name__}): {exc}") from exc
        outcomes[mutation.__name__, outcome] += 1

    kinds = {name for name, _ in outcomes}
    assert kinds == {m.__name__ for m in MUTATIONS}
    for name in ALWAYS_REFUSED:
        assert outcomes[name, "read"] == 0, f"{name} was read as if intact"
    assert outcomes["no_change", "refused"] == 0
    assert outcomes["no_change", "read"] == N_CASES // len(MUTATIONS)
    # Harmless index changes (int32 offsets, no locations key) must still read.
    assert outcomes["damage_dtype", "read"] > 0
    assert outcomes["drop_key", "read"] > 0
