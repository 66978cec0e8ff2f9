"""slideflow-compatible TFRecords, read and written without TensorFlow or protobuf.

A TFRecord file is a sequence of records, each framed as::

    uint64 length              little endian
    uint32 masked_crc32c(length bytes)
    byte   data[length]        a serialised tf.train.Example
    uint32 masked_crc32c(data)

with ``masked_crc32c(b) = ((c >> 15) | (c << 17)) + 0xA282EAD8 (mod 2**32)`` where ``c`` is the
CRC-32C (Castagnoli) of ``b``. Tile records hold the features ``slide`` (bytes), ``image_raw``
(JPEG or PNG bytes), ``loc_x`` and ``loc_y`` (int64 level-0 coordinates of the tile *centre*).

Beside each ``<name>.tfrecords`` lives ``<name>.index.npz`` (slideflow's layout): ``arr_0`` is an
int64 (n, 2) array of ``[offset, length]`` of every framed record, ``locations`` an int64 (n, 2)
array of ``(loc_x, loc_y)`` (-1 where a record has none).

The index is verified, not trusted: :class:`TFRecordReader` reads every record on open and takes
offsets and locations from the file; an index that disagrees with the file (a truncated file, a
stale or edited index) is a :class:`~histobag.errors.TFRecordError` naming the file, unless the
caller asks for the index to be rebuilt.

The module has four parts: CRC-32C and framing, a minimal protobuf codec for the
``tf.train.Example`` messages, index files and their verification, and the
:class:`TFRecordWriter` / :class:`TFRecordReader`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import google_crc32c
import numpy as np

from histobag.errors import TFRecordError
from histobag.files import AtomicFile, atomic_path
from histobag.io.images import decode_image

__all__ = [
    "TFRecordReader",
    "TFRecordWriter",
    "build_index",
    "crc32c",
    "decode_example",
    "encode_example",
    "frame_record",
    "index_path",
    "masked_crc32c",
    "read_index",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# CRC-32C and record framing
# --------------------------------------------------------------------------------------------


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) checksum of ``data``; ``crc32c(b"123456789") == 0xE3069283``."""
    return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C: the CRC rotated right by 15 bits plus ``0xA282EAD8``."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """Frame serialised ``data`` as one TFRecord: length, masked CRCs and the data."""
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


# --------------------------------------------------------------------------------------------
# tf.train.Example protobuf codec (just the messages TFRecords of tiles use)
#
#   Example  { Features features = 1; }
#   Features { map<string, Feature> feature = 1; }
#     (a map entry is { string key = 1; Feature value = 2; })
#   Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
#                      Int64List int64_list = 3; } }
#   BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
#   Int64List { repeated int64 value = 1 [packed]; }
# --------------------------------------------------------------------------------------------

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5

FeatureValue = bytes | str | int | float | Sequence[bytes] | Sequence[int] | Sequence[float]


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 are sent as their 64-bit two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """Encode a length-delimited field."""
    return _varint(number << 3 | _LENGTH) + _varint(len(payload)) + payload


def _encode_feature(name: str, value: Any) -> bytes:
    values = list(value) if isinstance(value, list | tuple | np.ndarray) else [value]
    if not values:
        raise TFRecordError(f"Feature {name!r} is an empty list; its type cannot be inferred.")
    if all(isinstance(v, bytes | bytearray | memoryview | str) for v in values):
        items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]
        return _field(1, b"".join(_field(1, v) for v in items))
    if all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return _field(3, _field(1, b"".join(_varint(int(v)) for v in values)))
    if all(isinstance(v, float | np.floating) for v in values):
        return _field(2, _field(1, struct.pack(f"<{len(values)}f", *values)))
    raise TFRecordError(
        f"Feature {name!r} must be bytes/str, int or float values (one type), got {values!r:.80}."
    )


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """Serialise a ``tf.train.Example`` from a mapping of feature name to value(s).

    ``bytes``/``str`` become a BytesList, ``int`` an Int64List, ``float`` a FloatList; a list or
    tuple gives a multi-valued feature. Entries are written in the mapping's order.
    """
    entries = b"".join(
        _field(1, _field(1, str(name).encode("utf-8")) + _field(2, _encode_feature(name, value)))
        for name, value in features.items()
    )
    return _field(1, entries)


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _iter_fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value); a length-delimited value is a (start, end) pair."""
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos, end)
        elif wire == _LENGTH:
            size, pos = _read_varint(buf, pos, end)
            value, pos = (pos, pos + size), pos + size
        elif wire == _FIXED64:
            value, pos = bytes(buf[pos : pos + 8]), pos + 8
        elif wire == _FIXED32:
            value, pos = bytes(buf[pos : pos + 4]), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("field runs past the end of its message")
        yield number, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _decode_feature(buf: memoryview, start: int, end: int) -> list[Any]:
    values: list[Any] = []
    for kind, wire, span in _iter_fields(buf, start, end):
        if wire != _LENGTH:
            continue
        for number, vwire, value in _iter_fields(buf, *span):
            if number != 1:
                continue
            if kind == 1 and vwire == _LENGTH:  # BytesList
                values.append(bytes(buf[value[0] : value[1]]))
            elif kind == 3 and vwire == _VARINT:  # Int64List, unpacked
                values.append(_signed64(value))
            elif kind == 3 and vwire == _LENGTH:  # Int64List, packed
                pos, stop = value
                while pos < stop:
                    item, pos = _read_varint(buf, pos, stop)
                    values.append(_signed64(item))
            elif kind == 2 and vwire == _FIXED32:  # FloatList, unpacked
                values.append(struct.unpack("<f", value)[0])
            elif kind == 2 and vwire == _LENGTH:  # FloatList, packed
                raw = bytes(buf[value[0] : value[1]])
                values.extend(struct.unpack(f"<{len(raw) // 4}f", raw))
    return values


_PARSE_ERRORS = (ValueError, UnicodeDecodeError, struct.error)


def _parse_example(data: bytes) -> dict[str, list[Any]]:
    """:func:`decode_example` without the error wrapping (raises one of ``_PARSE_ERRORS``)."""
    buf = memoryview(data)
    features: dict[str, list[Any]] = {}
    for number, wire, span in _iter_fields(buf, 0, len(buf)):
        if number != 1 or wire != _LENGTH:
            continue
        for entry_number, entry_wire, entry in _iter_fields(buf, *span):
            if entry_number != 1 or entry_wire != _LENGTH:
                continue
            key, value = "", []
            for part, part_wire, part_span in _iter_fields(buf, *entry):
                if part == 1 and part_wire == _LENGTH:
                    key = bytes(buf[part_span[0] : part_span[1]]).decode("utf-8")
                elif part == 2 and part_wire == _LENGTH:
                    value = _decode_feature(buf, *part_span)
            features[key] = value
    return features


def decode_example(data: bytes) -> dict[str, list[Any]]:
    """Parse a serialised ``tf.train.Example`` into ``{name: [values]}``.

    Values are ``bytes`` (BytesList), ``int`` (Int64List) or ``float`` (FloatList). Unknown
    fields are skipped, as protobuf does.

    Raises:
        TFRecordError: ``data`` is not a valid Example.
    """
    try:
        return _parse_example(data)
    except _PARSE_ERRORS as exc:
        raise TFRecordError(f"Record is not a valid tf.train.Example ({exc}).") from None


def _unwrap(example: dict[str, list[Any]]) -> dict[str, Any]:
    return {k: v[0] if len(v) == 1 else v for k, v in example.items()}


def _location(example: Mapping[str, Any]) -> tuple[int, int]:
    x, y = example.get("loc_x"), example.get("loc_y")
    x = x[0] if isinstance(x, list | tuple) and len(x) == 1 else x
    y = y[0] if isinstance(y, list | tuple) and len(y) == 1 else y
    if isinstance(x, int | np.integer) and isinstance(y, int | np.integer):
        return int(x), int(y)
    return -1, -1


# --------------------------------------------------------------------------------------------
# Index files and verification
#
# The index is an offset cache, never a source of truth: a reader takes every record's offset,
# length and location from the file itself, and an index that disagrees with the file is an
# error (it is how a file truncated at a record boundary shows itself).
# --------------------------------------------------------------------------------------------


def index_path(tfrecord: str | Path) -> Path:
    """Return the index file of a TFRecord: ``a/b.tfrecords`` -> ``a/b.index.npz``."""
    tfrecord = Path(tfrecord)
    name = tfrecord.name
    stem = name[: -len(".tfrecords")] if name.endswith(".tfrecords") else tfrecord.stem
    return tfrecord.with_name(f"{stem}.index.npz")


def write_index(path: str | Path, offsets: np.ndarray, locations: np.ndarray) -> Path:
    """Atomically write an ``.index.npz`` with ``arr_0`` = offsets and ``locations``."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        # a file object, so numpy does not append '.npz' to the name
        np.savez(
            f,
            np.asarray(offsets, dtype=np.int64).reshape(-1, 2),
            locations=np.asarray(locations, dtype=np.int64).reshape(-1, 2),
        )
    return path


def _int_pairs(array: np.ndarray, name: str) -> np.ndarray:
    """An integer (n, 2) array as int64; an empty array of any shape is (0, 2)."""
    if array.size == 0:  # slideflow saves an empty index as a float64 (0,) array
        return np.zeros((0, 2), dtype=np.int64)
    if array.dtype.kind not in "iu" or array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(
            f"'{name}' has dtype {array.dtype} and shape {array.shape}, not an (n, 2) integer array"
        )
    return array.astype(np.int64)


def _load_index(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(offsets, locations or None when the index has no ``locations``) of an index file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "arr_0" not in data.files:
                raise ValueError("it has no 'arr_0' array of record offsets")
            offsets = _int_pairs(data["arr_0"], "arr_0")
            locations = None
            if "locations" in data.files:
                locations = _int_pairs(data["locations"], "locations")
    except Exception as exc:  # a damaged npz fails in many ways (zip, npy header, pickle guard)
        reason = str(exc) or type(exc).__name__
        raise TFRecordError(f"Cannot read TFRecord index {path}: {reason}.") from None
    if locations is not None and len(locations) != len(offsets):
        raise TFRecordError(
            f"TFRecord index {path} has {len(offsets)} offsets but {len(locations)} locations."
        )
    return offsets, locations


def read_index(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ``.index.npz`` as it is stored: (offsets (n, 2) int64, locations (n, 2) int64).

    Locations are -1 when the index has none. Nothing here is checked against the TFRecord;
    :class:`TFRecordReader` does that.

    Raises:
        TFRecordError: The file cannot be read or has the wrong layout.
    """
    offsets, locations = _load_index(Path(path))
    if locations is None:
        locations = np.full((len(offsets), 2), -1, dtype=np.int64)
    return offsets, locations


def _rebuild_hint(tfrecord: Path) -> str:
    return (
        "If the TFRecord is complete and only its index is stale, rebuild the index with "
        f"histobag.io.tfrecord.build_index({str(tfrecord)!r}) (or open it with "
        "TFRecordReader(path, rebuild_index=True)); otherwise extract the tiles for this slide "
        "again."
    )


def _check_index(tfrecord: Path, offsets: np.ndarray, locations: np.ndarray) -> None:
    """Raise unless the index beside ``tfrecord`` lists exactly the records found in it."""
    idx = index_path(tfrecord)
    try:
        stored, stored_locations = _load_index(idx)
    except TFRecordError as exc:
        raise TFRecordError(f"{tfrecord}: {exc} {_rebuild_hint(tfrecord)}") from None
    n_file, n_index = len(offsets), len(stored)
    size = int(offsets[-1, 0]) + int(offsets[-1, 1]) if n_file else 0
    index_end = int(stored[-1, 0]) + int(stored[-1, 1]) if n_index else 0
    if n_index > n_file and index_end > size:
        raise TFRecordError(
            f"{tfrecord} is shorter than its index {idx.name} says: the file holds {n_file} "
            f"records ({size} bytes), the index lists {n_index} records ({index_end} bytes), so "
            f"the file was probably truncated. {_rebuild_hint(tfrecord)}"
        )
    if not np.array_equal(stored, offsets):
        i = _first_difference(stored, offsets)
        what = (
            f"record {i} is (offset, length) {tuple(map(int, offsets[i]))} in the file but "
            f"{tuple(map(int, stored[i]))} in the index"
            if i < min(n_file, n_index)
            else f"the file holds {n_file} records, the index lists {n_index}"
        )
        raise TFRecordError(
            f"{tfrecord} does not match its index {idx.name}: {what}. {_rebuild_hint(tfrecord)}"
        )
    if stored_locations is not None and not np.array_equal(stored_locations, locations):
        i = _first_difference(stored_locations, locations)
        raise TFRecordError(
            f"{tfrecord} does not match its index {idx.name}: record {i} holds the location "
            f"{tuple(map(int, locations[i]))} but the index says "
            f"{tuple(map(int, stored_locations[i]))}. {_rebuild_hint(tfrecord)}"
        )


def _first_difference(a: np.ndarray, b: np.ndarray) -> int:
    """First row where two (n, 2) arrays differ (the shorter length if one is a prefix)."""
    n = min(len(a), len(b))
    differ = np.flatnonzero((a[:n] != b[:n]).any(axis=1))
    return int(differ[0]) if len(differ) else n


def _scan(path: Path, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Read every record of ``path`` in order: (offsets (n, 2), locations (n, 2)).

    Each record's framing is checked against the file's size, its CRCs when ``verify``, and its
    Example is decoded for the location.
    """
    offsets, locations = [], []
    with path.open("rb", buffering=1 << 20) as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size:
            length = _parse_header(path, offset, f.read(12), verify)
            if 16 + length > size - offset:
                raise TFRecordError(
                    f"{path}: the record at byte offset {offset} is truncated (the file ends "
                    f"{size - offset} bytes into its {16 + length}). The file is incomplete; "
                    "extract the tiles for this slide again."
                )
            data = _read_body(f, path, offset, length, verify)
            offsets.append((offset, 16 + length))
            locations.append(_location(_decode(path, offset, data)))
            offset += 16 + length
    return (
        np.asarray(offsets, dtype=np.int64).reshape(-1, 2),
        np.asarray(locations, dtype=np.int64).reshape(-1, 2),
    )


def build_index(tfrecord: str | Path, *, save: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Scan a TFRecord (checking every CRC) and return (offsets, locations).

    This is also how a stale index is replaced: the new index describes the file as it is now,
    so call it only for a file known to be complete (a file truncated exactly at a record
    boundary looks complete once its index is rebuilt).

    Args:
        tfrecord: The ``.tfrecords`` file.
        save: Also write ``<name>.index.npz`` beside it (atomically), replacing any old one.

    Raises:
        TFRecordError: The file is corrupted or truncated inside a record.
    """
    tfrecord = Path(tfrecord)
    offsets, locations = _scan(tfrecord, verify=True)
    if save:
        write_index(index_path(tfrecord), offsets, locations)
    return offsets, locations


def _parse_header(path: Path, offset: int, header: bytes, verify: bool) -> int:
    """The data length from a record's 12 header bytes, its CRC checked when ``verify``."""
    if len(header) < 12:
        raise TFRecordError(
            f"{path}: truncated record header at byte offset {offset}. The file is incomplete; "
            "extract the tiles for this slide again."
        )
    (length,) = struct.unpack("<Q", header[:8])
    (length_crc,) = struct.unpack("<I", header[8:12])
    if verify and masked_crc32c(header[:8]) != length_crc:
        raise TFRecordError(
            f"{path}: CRC-32C mismatch in the length of the record at byte offset {offset}; "
            "the file is corrupted. Extract the tiles for this slide again."
        )
    return int(length)


def _read_body(f: BinaryIO, path: Path, offset: int, length: int, verify: bool) -> bytes:
    """Read a record's data and data CRC (the caller has checked they fit in the file)."""
    body = f.read(length + 4)
    if len(body) < length + 4:
        raise TFRecordError(
            f"{path}: record at byte offset {offset} is truncated ({len(body)} of {length + 4} "
            "bytes). Extract the tiles for this slide again."
        )
    data, (data_crc,) = body[:length], struct.unpack("<I", body[length:])
    if verify and masked_crc32c(data) != data_crc:
        raise TFRecordError(
            f"{path}: CRC-32C mismatch in the data of the record at byte offset {offset}; "
            "the file is corrupted. Extract the tiles for this slide again."
        )
    return data


def _decode(path: Path, offset: int, data: bytes) -> dict[str, list[Any]]:
    """:func:`decode_example` with the file and record named in its error."""
    try:
        return _parse_example(data)
    except _PARSE_ERRORS as exc:
        raise TFRecordError(
            f"{path}: the record at byte offset {offset} is not a valid tf.train.Example "
            f"({exc}). Extract the tiles for this slide again."
        ) from None


# --------------------------------------------------------------------------------------------
# Writer and reader
# --------------------------------------------------------------------------------------------


class TFRecordWriter:
    """Write a TFRecord atomically, and its ``.index.npz``.

    Records go to a hidden temporary file in the same folder, which is renamed to ``path`` on
    :meth:`close`; then the index is written the same way. If the ``with`` block raises, the
    temporary file is removed and ``path`` is left untouched.

    Example:
        >>> with TFRecordWriter("out/slide.tfrecords") as writer:  # doctest: +SKIP
        ...     writer.write_tile("slide", jpeg_bytes, loc_x=128, loc_y=128)
    """

    def __init__(self, path: str | Path, *, index: bool = True) -> None:
        """Open ``path`` for writing (its folder is created if needed).

        Args:
            path: The ``.tfrecords`` file to create or replace.
            index: Also write ``<name>.index.npz`` on close.
        """
        self.path = Path(path)
        self._index = index
        self._atomic = AtomicFile(self.path)
        self._file: BinaryIO | None = self._atomic.handle
        self._offsets: list[tuple[int, int]] = []
        self._locations: list[tuple[int, int]] = []
        self._position = 0

    def __len__(self) -> int:
        """Return the number of records written so far."""
        return len(self._offsets)

    def write(self, record: bytes | Mapping[str, FeatureValue]) -> None:
        """Append one record: a mapping of features, or an already serialised Example."""
        if self._file is None:
            raise TFRecordError(f"TFRecordWriter for {self.path} is closed.")
        if isinstance(record, Mapping):
            location = _location(record)
            data = encode_example(record)
        else:
            data = bytes(record)
            location = _location(decode_example(data))
        framed = frame_record(data)
        self._file.write(framed)
        self._offsets.append((self._position, len(framed)))
        self._locations.append(location)
        self._position += len(framed)

    def write_tile(self, slide: str, image: bytes, loc_x: int, loc_y: int) -> None:
        """Append a slideflow tile record: slide name, encoded image, level-0 tile centre."""
        self.write({"slide": slide, "image_raw": image, "loc_x": int(loc_x), "loc_y": int(loc_y)})

    def close(self) -> Path:
        """Finish the file: flush, rename it into place, write the index. Returns ``path``."""
        if self._file is None:
            return self.path
        self._file = None
        self._atomic.commit()
        if self._index:
            write_index(index_path(self.path), self._offsets, self._locations)
        return self.path

    def abort(self) -> None:
        """Discard everything written; ``path`` is left as it was."""
        self._file = None
        self._atomic.abort()

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.abort()


class TFRecordReader:
    """Random access to the records of a TFRecord, verified rather than trusted.

    ``reader[i]`` returns the ``i``-th record as a dict; single-valued features are unwrapped
    (``{"slide": b"name", "image_raw": b"...", "loc_x": 128, "loc_y": 384}``). The reader opens
    its file lazily and pickles without it, so it can be handed to worker processes.

    What is checked, and when:

    * **On open**, the whole file is read once: every record's framing (its length against the
      file's size), both CRC-32Cs, and its Example, which gives :attr:`offsets` and
      :attr:`locations`. Locations therefore always come from the records (``loc_x``,
      ``loc_y``; -1 where a record has none), never from the index. This costs about one
      sequential read of the file, a few percent of decoding its tiles.
    * **The index** ``<name>.index.npz`` is an offset cache: when it exists, its offsets,
      lengths and locations must equal what the file holds, or opening fails with a
      :class:`~histobag.errors.TFRecordError` naming the file. An index listing more records or
      bytes than the file holds is how a file truncated at a record boundary shows itself.
      ``rebuild_index=True`` (or :func:`build_index`) replaces a stale index instead.
    * **On every read**, the record's framing is checked again, its data CRC when ``verify``,
      and its location against the one found on open, so a file changed after opening is an
      error rather than wrong tiles.

    Without an index, a file truncated exactly at a record boundary cannot be told from a file
    that was written shorter: it opens with fewer records. Keep the index beside the TFRecord
    (:class:`TFRecordWriter` writes it) to detect that; a missing index is built in memory on
    open and not saved (call :func:`build_index` to save it).
    """

    def __init__(
        self, path: str | Path, *, verify: bool = True, rebuild_index: bool = False
    ) -> None:
        """Open and verify the TFRecord at ``path``.

        Args:
            path: A ``.tfrecords`` file.
            verify: Check both CRC-32Cs of every record, on open and on every read. ``False``
                trusts the payloads (a corrupted record may then decode to wrong pixels or
                locations); framing and the index are checked either way.
            rebuild_index: Replace ``<name>.index.npz`` with one built from the file instead of
                checking it. Only for a file known to be complete: a file truncated at a record
                boundary is accepted as it is.

        Raises:
            TFRecordError: The file does not exist, is corrupted or truncated, or disagrees with
                its index. The message names the file and says what to do.
        """
        self.path = Path(path)
        if not self.path.is_file():
            raise TFRecordError(
                f"TFRecord {self.path} does not exist. Extract tiles first "
                "(WSI.extract_tiles or Dataset.extract_tiles)."
            )
        self.verify = verify
        self._file: BinaryIO | None = None
        self.offsets, self.locations = _scan(self.path, verify=verify or rebuild_index)
        if rebuild_index:
            write_index(index_path(self.path), self.offsets, self.locations)
        elif index_path(self.path).is_file():
            _check_index(self.path, self.offsets, self.locations)

    def __len__(self) -> int:
        """Return the number of records."""
        return len(self.offsets)

    def _handle(self) -> BinaryIO:
        if self._file is None:
            # Unbuffered: a read always sees the file as it is now, never a stale buffer.
            self._file = self.path.open("rb", buffering=0)
        return self._file

    def _position(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for {self.path} with {n} records")
        return i % n

    def read_record(self, i: int) -> bytes:
        """Return the serialised Example of record ``i`` (negative indices count from the end).

        Raises:
            IndexError: ``i`` is out of range.
            TFRecordError: The record is corrupted (a CRC mismatch), truncated, or no longer
                where it was when the file was opened.
        """
        i = self._position(int(i))
        offset, size = int(self.offsets[i, 0]), int(self.offsets[i, 1])
        f = self._handle()
        f.seek(offset)
        length = _parse_header(self.path, offset, f.read(12), self.verify)
        if 16 + length != size:
            raise TFRecordError(
                f"{self.path}: the record at byte offset {offset} now frames {16 + length} bytes, "
                f"not the {size} it framed when the file was opened; the file changed while it "
                "was being read. Open it again once it is complete."
            )
        return _read_body(f, self.path, offset, length, self.verify)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Record ``i`` decoded, with single-valued features unwrapped.

        Raises:
            IndexError: ``i`` is out of range.
            TFRecordError: As :meth:`read_record`, or the record's location is not the one it
                held when the file was opened.
        """
        i = self._position(int(i))
        offset = int(self.offsets[i, 0])
        example = _decode(self.path, offset, self.read_record(i))
        if _location(example) != tuple(map(int, self.locations[i])):
            raise TFRecordError(
                f"{self.path}: the record at byte offset {offset} now holds the location "
                f"{_location(example)}, not {tuple(map(int, self.locations[i]))} as when the file "
                "was opened; the file changed while it was being read. Open it again."
            )
        return _unwrap(example)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Iterate over the records in file order."""
        for i in range(len(self)):
            yield self[i]

    def read_tiles(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode the ``image_raw`` of the given records into a uint8 (n, H, W, 3) array.

        Raises:
            IndexError: An index is out of range.
            TFRecordError: A record is corrupted, holds no decodable image, or the tiles differ
                in size.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        tiles = [self._tile(int(i)) for i in indices]
        if not tiles:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        if len({t.shape for t in tiles}) > 1:
            raise TFRecordError(f"{self.path}: tiles of different sizes cannot be stacked.")
        return np.stack(tiles)

    def _tile(self, i: int) -> np.ndarray:
        image = self[i].get("image_raw")
        try:
            if not isinstance(image, bytes):
                raise ValueError("it has no single 'image_raw' bytes feature")
            return decode_image(image)
        except Exception as exc:  # Pillow raises several types for bytes that are no image
            raise TFRecordError(
                f"{self.path}: record {i} holds no readable tile image ({exc}). "
                "Extract the tiles for this slide again."
            ) from None

    def close(self) -> None:
        """Close the file handle (it reopens on the next read)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> TFRecordReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def __repr__(self) -> str:
        return f"TFRecordReader({str(self.path)!r}, records={len(self)})"
