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

The module has three parts: CRC-32C and framing, a minimal protobuf codec for the
``tf.train.Example`` messages, and the :class:`TFRecordWriter` / :class:`TFRecordReader`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from histobag.errors import TFRecordError
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

_CRC_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_CRC_TABLE: list[int] = []
for _byte in range(256):
    _c = _byte
    for _ in range(8):
        _c = (_c >> 1) ^ _CRC_POLY if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def _crc32c_python(data: bytes) -> int:
    """Table-driven CRC-32C in pure Python (about 3 MB/s); used only without google-crc32c."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # google-crc32c's C extension runs at several GB/s
    import google_crc32c as _google_crc32c

    def crc32c(data: bytes) -> int:
        """CRC-32C (Castagnoli) checksum of ``data``; ``crc32c(b"123456789") == 0xE3069283``."""
        return _google_crc32c.value(bytes(data))

except ImportError:  # pragma: no cover - google-crc32c is a dependency
    crc32c = _crc32c_python


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


def decode_example(data: bytes) -> dict[str, list[Any]]:
    """Parse a serialised ``tf.train.Example`` into ``{name: [values]}``.

    Values are ``bytes`` (BytesList), ``int`` (Int64List) or ``float`` (FloatList). Unknown
    fields are skipped, as protobuf does.

    Raises:
        TFRecordError: ``data`` is not a valid Example.
    """
    buf = memoryview(data)
    features: dict[str, list[Any]] = {}
    try:
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
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise TFRecordError(f"Record is not a valid tf.train.Example ({exc}).") from None
    return features


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
# Index files
# --------------------------------------------------------------------------------------------


def index_path(tfrecord: str | Path) -> Path:
    """Return the index file of a TFRecord: ``a/b.tfrecords`` -> ``a/b.index.npz``."""
    tfrecord = Path(tfrecord)
    name = tfrecord.name
    stem = name[: -len(".tfrecords")] if name.endswith(".tfrecords") else tfrecord.stem
    return tfrecord.with_name(f"{stem}.index.npz")


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def write_index(path: str | Path, offsets: np.ndarray, locations: np.ndarray) -> Path:
    """Atomically write an ``.index.npz`` with ``arr_0`` = offsets and ``locations``."""
    path = Path(path)
    tmp = _temp_name(path)
    try:
        with tmp.open("wb") as f:  # a file object, so numpy does not append '.npz' to the name
            np.savez(
                f,
                np.asarray(offsets, dtype=np.int64).reshape(-1, 2),
                locations=np.asarray(locations, dtype=np.int64).reshape(-1, 2),
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_index(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ``.index.npz``: (offsets (n, 2) int64, locations (n, 2) int64).

    Raises:
        TFRecordError: The file cannot be read or has the wrong layout.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            offsets = np.asarray(data["arr_0"], dtype=np.int64).reshape(-1, 2)
            if "locations" in data:
                locations = np.asarray(data["locations"], dtype=np.int64).reshape(-1, 2)
            else:
                locations = np.full((len(offsets), 2), -1, dtype=np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise TFRecordError(f"Cannot read TFRecord index {path}: {exc}.") from None
    if len(locations) != len(offsets):
        raise TFRecordError(
            f"TFRecord index {path} has {len(offsets)} offsets but {len(locations)} locations."
        )
    return offsets, locations


def _scan(path: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    offsets, locations = [], []
    with path.open("rb") as f:
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                break
            data = _read_framed(f, path, offset, header, verify)
            size = 16 + len(data)
            offsets.append((offset, size))
            locations.append(_location(decode_example(data)))
            offset += size
    return (
        np.asarray(offsets, dtype=np.int64).reshape(-1, 2),
        np.asarray(locations, dtype=np.int64).reshape(-1, 2),
    )


def build_index(tfrecord: str | Path, *, save: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Scan a TFRecord (checking every CRC) and return (offsets, locations).

    Args:
        tfrecord: The ``.tfrecords`` file.
        save: Also write ``<name>.index.npz`` beside it (atomically).

    Raises:
        TFRecordError: The file is corrupted or truncated.
    """
    tfrecord = Path(tfrecord)
    offsets, locations = _scan(tfrecord, verify=True)
    if save:
        write_index(index_path(tfrecord), offsets, locations)
    return offsets, locations


def _read_framed(f: BinaryIO, path: Path, offset: int, header: bytes, verify: bool) -> bytes:
    """Read one record's data given its 12 header bytes, checking both CRCs."""
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._index = index
        self._tmp = _temp_name(self.path)
        self._file: BinaryIO | None = self._tmp.open("wb")
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
        file, self._file = self._file, None
        try:
            file.flush()
            os.fsync(file.fileno())
            file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            file.close()
            self._tmp.unlink(missing_ok=True)
            raise
        if self._index:
            write_index(index_path(self.path), self._offsets, self._locations)
        return self.path

    def abort(self) -> None:
        """Discard everything written; ``path`` is left as it was."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)

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
    """Random access to the records of a TFRecord through its index.

    ``reader[i]`` returns the ``i``-th record as a dict; single-valued features are unwrapped
    (``{"slide": b"name", "image_raw": b"...", "loc_x": 128, "loc_y": 384}``). Every read checks
    both masked CRC-32Cs. The reader opens its file lazily and pickles without it, so it can be
    handed to worker processes.

    If the index is missing or does not match the file, it is rebuilt in memory by scanning the
    file (call :func:`build_index` to save it).
    """

    def __init__(self, path: str | Path, *, verify: bool = True) -> None:
        """Open the TFRecord at ``path``.

        Args:
            path: A ``.tfrecords`` file.
            verify: Check CRCs on every read.

        Raises:
            TFRecordError: The file does not exist, or is corrupted while its index is rebuilt.
        """
        self.path = Path(path)
        if not self.path.is_file():
            raise TFRecordError(
                f"TFRecord {self.path} does not exist. Extract tiles first "
                "(WSI.extract_tiles or Dataset.extract_tiles)."
            )
        self.verify = verify
        self._file: BinaryIO | None = None
        self.offsets, self.locations = self._load_index()

    def _load_index(self) -> tuple[np.ndarray, np.ndarray]:
        size = self.path.stat().st_size
        idx = index_path(self.path)
        if idx.is_file():
            try:
                offsets, locations = read_index(idx)
            except TFRecordError as exc:
                logger.warning("%s; rebuilding it from %s.", exc, self.path)
            else:
                ends = offsets[:, 0] + offsets[:, 1]
                consistent = (len(offsets) == 0 and size == 0) or (
                    len(offsets) > 0
                    and offsets[0, 0] == 0
                    and ends[-1] == size
                    and np.array_equal(offsets[1:, 0], ends[:-1])
                )
                if consistent:
                    return offsets, locations
                logger.warning("Index %s does not match %s; rebuilding it.", idx, self.path)
        return _scan(self.path, verify=True)

    def __len__(self) -> int:
        """Return the number of records."""
        return len(self.offsets)

    def _handle(self) -> BinaryIO:
        if self._file is None:
            self._file = self.path.open("rb")
        return self._file

    def read_record(self, i: int) -> bytes:
        """Return the serialised Example of record ``i`` (negative indices count from the end).

        Raises:
            IndexError: ``i`` is out of range.
            TFRecordError: The record is corrupted (a CRC mismatch) or truncated.
        """
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for {self.path} with {n} records")
        offset = int(self.offsets[i % n, 0])
        f = self._handle()
        f.seek(offset)
        return _read_framed(f, self.path, offset, f.read(12), self.verify)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Record ``i`` decoded, with single-valued features unwrapped."""
        return _unwrap(decode_example(self.read_record(int(i))))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Iterate over the records in file order."""
        for i in range(len(self)):
            yield self[i]

    def read_tiles(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode the ``image_raw`` of the given records into a uint8 (n, H, W, 3) array."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        tiles = [decode_image(self[int(i)]["image_raw"]) for i in indices]
        if not tiles:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        if len({t.shape for t in tiles}) > 1:
            raise TFRecordError(f"{self.path}: tiles of different sizes cannot be stacked.")
        return np.stack(tiles)

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
