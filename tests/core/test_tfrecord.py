"""TFRecords: the format built by hand from its specification, round trips, CRC checks, index."""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

import histobag
from histobag.errors import HistobagError, TFRecordError
from histobag.io.images import decode_image, encode_image
from histobag.io.tfrecord import (
    TFRecordReader,
    TFRecordWriter,
    build_index,
    crc32c,
    decode_example,
    encode_example,
    index_path,
    masked_crc32c,
    read_index,
)
from histobag.slide import WSI
from histobag.tile_readers import OpenTFRecord
from tests.core.bag_helpers import PIXELNET
from tests.core.toy_models import registered


def spec_crc32c(data: bytes) -> int:
    """Bitwise CRC-32C straight from its definition (reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def spec_masked(data: bytes) -> int:
    crc = spec_crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def test_crc32c_known_answers():
    assert spec_crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    assert crc32c(data) == spec_crc32c(data)
    assert masked_crc32c(data) == spec_masked(data)


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (200, 30, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def varint(n: int) -> bytes:
    """Base-128 varint: 7 bits per byte, least significant first, high bit = more follows."""
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])


def hand_made_example(png: bytes) -> bytes:
    """tf.train.Example bytes written field by field from example.proto / feature.proto.

    A field key is (field_number << 3 | wire_type); wire type 2 (length-delimited) is followed by
    the payload's length as a varint.
    """
    assert varint(300) == b"\xac\x02"

    def entry(key: bytes, feature: bytes) -> bytes:
        # Features.feature map entry (field 1): key (field 1, string), value (field 2, Feature)
        body = b"\x0a" + varint(len(key)) + key + b"\x12" + varint(len(feature)) + feature
        return b"\x0a" + varint(len(body)) + body

    # Feature.bytes_list (field 1) -> BytesList.value (field 1, bytes)
    slide = b"\x0a\x07" + b"\x0a\x05" + b"slide"
    png_value = b"\x0a" + varint(len(png)) + png
    image = b"\x0a" + varint(len(png_value)) + png_value
    # Feature.int64_list (field 3) -> Int64List.value (field 1, packed varints)
    loc_x = b"\x1a\x03" + b"\x0a\x01" + b"\x05"  # 5
    loc_y = b"\x1a\x04" + b"\x0a\x02" + b"\xac\x02"  # 300
    features = (
        entry(b"slide", slide)
        + entry(b"image_raw", image)
        + entry(b"loc_x", loc_x)
        + entry(b"loc_y", loc_y)
    )
    return b"\x0a" + varint(len(features)) + features  # Example.features (field 1)


def frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", spec_masked(length))
        + data
        + struct.pack("<I", spec_masked(data))
    )


def test_reads_a_record_built_byte_by_byte_from_the_spec(tmp_path):
    png = tiny_png()
    example = hand_made_example(png)
    path = tmp_path / "manual.tfrecords"
    path.write_bytes(frame(example) + frame(example))

    with TFRecordReader(path) as reader:  # no index: built by scanning the file
        assert len(reader) == 2
        record = reader[1]
        np.testing.assert_array_equal(reader.locations, [[5, 300], [5, 300]])
        np.testing.assert_array_equal(reader.offsets[:, 1], [16 + len(example)] * 2)
        tiles = reader.read_tiles([0])
    assert record == {"slide": b"slide", "image_raw": png, "loc_x": 5, "loc_y": 300}
    np.testing.assert_array_equal(tiles[0], np.full((2, 2, 3), (200, 30, 60), np.uint8))
    assert not index_path(path).exists()

    # histobag's own encoder produces exactly the same bytes.
    features = {"slide": "slide", "image_raw": png, "loc_x": 5, "loc_y": 300}
    assert encode_example(features) == example
    with TFRecordWriter(tmp_path / "ours.tfrecords") as writer:
        writer.write_tile("slide", png, 5, 300)
        writer.write(example)
    assert (tmp_path / "ours.tfrecords").read_bytes() == path.read_bytes()


def test_protobuf_codec_edge_cases():
    features = {"neg": -3, "many": [1, 2**40, -(2**63)], "f": [0.5, -2.0], "s": ["a", b"b"]}
    assert decode_example(encode_example(features)) == {
        "neg": [-3],
        "many": [1, 2**40, -(2**63)],
        "f": [0.5, -2.0],
        "s": [b"a", b"b"],
    }
    # Unpacked int64 (wire type 0) as older writers emit, and an unknown Example field (2).
    unpacked = b"\x0a\x0e\x0a\x0c\x0a\x01k\x12\x07\x1a\x05\x08\x07\x08\x96\x01" + b"\x12\x00"
    assert decode_example(unpacked) == {"k": [7, 150]}
    with pytest.raises(TFRecordError, match=r"not a valid tf\.train\.Example"):
        decode_example(b"\x0a\x7f\x01")
    with pytest.raises(TFRecordError, match="empty list"):
        encode_example({"x": []})


@pytest.fixture(scope="module")
def small_wsi(slide_path) -> WSI:
    return WSI(slide_path, 64, 128, tissue=None)  # 64 px tiles from level 1: fast


def test_round_trip_with_index(small_wsi, tmp_path):
    tiles = small_wsi.read_tiles(range(20))
    path = tmp_path / "rt.tfrecords"
    with TFRecordWriter(path) as writer:
        for i, tile in enumerate(tiles):
            x, y = small_wsi.coords[i]
            writer.write_tile("rt", encode_image(tile, "png"), x + 128, y + 128)
        assert len(writer) == 20
    offsets, locations = read_index(index_path(path))
    assert offsets.dtype == np.int64
    assert offsets.shape == (20, 2)
    assert offsets[0, 0] == 0
    assert offsets[-1].sum() == path.stat().st_size
    np.testing.assert_array_equal(locations, small_wsi.coords[:20] + 128)
    with np.load(index_path(path), allow_pickle=False) as raw:  # slideflow's key names
        assert set(raw.files) == {"arr_0", "locations"}

    reader = TFRecordReader(path)
    np.testing.assert_array_equal(reader.read_tiles(range(20)), tiles)
    np.testing.assert_array_equal(reader.read_tiles([19, 3]), tiles[[19, 3]])
    assert reader[-1]["loc_x"] == small_wsi.coords[19, 0] + 128
    assert [r["slide"] for r in reader] == [b"rt"] * 20
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read_tiles([5]), tiles[[5]])
    with pytest.raises(IndexError):
        reader[20]

    # A deleted index is rebuilt identically (in memory, not saved); build_index saves it.
    index_path(path).unlink()
    np.testing.assert_array_equal(TFRecordReader(path).offsets, offsets)
    assert not index_path(path).exists()
    build_index(path)
    np.testing.assert_array_equal(read_index(index_path(path))[0], offsets)
    # A stale index (another file's) is an error naming the file, until it is rebuilt.
    stale = tmp_path / "stale.tfrecords"
    with TFRecordWriter(stale) as writer:
        writer.write_tile("x", b"a", 1, 2)
    os.replace(index_path(stale), index_path(path))
    with pytest.raises(TFRecordError, match=r"rt\.tfrecords does not match its index.*build_index"):
        TFRecordReader(path)
    assert len(TFRecordReader(path, rebuild_index=True)) == 20
    np.testing.assert_array_equal(read_index(index_path(path))[0], offsets)
    assert len(TFRecordReader(path)) == 20


def test_wsi_extract_tiles_writes_slideflow_records(small_wsi, tmp_path):
    path = small_wsi.extract_tiles(tmp_path / "out", img_format="png", progress=False)
    assert path == tmp_path / "out" / "sample.tfrecords"
    assert index_path(path).is_file()
    tiles, keep = small_wsi.read_tiles(range(len(small_wsi)), return_mask=True)
    reader = TFRecordReader(path)
    assert 0 < len(reader) == keep.sum() < len(small_wsi)
    np.testing.assert_array_equal(reader.read_tiles(range(len(reader))), tiles[keep])
    np.testing.assert_array_equal(
        reader.locations, small_wsi.coords[keep] + small_wsi.full_extract_px // 2
    )
    assert reader[0]["slide"] == b"sample"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]

    jpeg = small_wsi.extract_tiles(tmp_path / "jpg", img_format="jpg", quality=90, progress=False)
    decoded = TFRecordReader(jpeg).read_tiles([0, 1]).astype(int)
    assert TFRecordReader(jpeg)[0]["image_raw"][:2] == b"\xff\xd8"  # JPEG SOI marker
    assert np.abs(decoded - tiles[keep][:2]).mean() < 8


def test_corruption_gives_a_clear_crc_error(small_wsi, tmp_path):
    path = tmp_path / "c.tfrecords"
    with TFRecordWriter(path) as writer:
        for tile in small_wsi.read_tiles(range(3)):
            writer.write_tile("c", encode_image(tile, "png"), 0, 0)
    offsets = TFRecordReader(path).offsets
    data = bytearray(path.read_bytes())
    data[int(offsets[1, 0]) + 40] ^= 0x01  # one bit inside record 1's payload
    path.write_bytes(bytes(data))
    # Opening reads every record, so the damage is found before any tile is returned.
    with pytest.raises(TFRecordError, match=rf"c\.tfrecords.*offset {offsets[1, 0]}") as info:
        TFRecordReader(path)
    assert "CRC-32C mismatch in the data" in str(info.value)
    assert TFRecordReader(path, verify=False)[0]["slide"] == b"c"

    # Damage after opening is found when the record is read.
    data[int(offsets[1, 0]) + 40] ^= 0x01
    path.write_bytes(bytes(data))
    reader = TFRecordReader(path)
    data[int(offsets[1, 0]) + 40] ^= 0x01
    path.write_bytes(bytes(data))
    assert reader[0]["slide"] == b"c"
    with pytest.raises(TFRecordError, match="CRC-32C mismatch in the data"):
        reader[1]

    data[int(offsets[1, 0]) + 40] ^= 0x01
    data[int(offsets[2, 0]) + 2] ^= 0x10  # the length field of record 2
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match=f"CRC-32C mismatch in the length.*{offsets[2, 0]}"):
        TFRecordReader(path)
    index_path(path).unlink()
    with pytest.raises(TFRecordError, match=f"offset {offsets[2, 0]}"):
        TFRecordReader(path)  # without an index the same scan checks every record

    truncated = tmp_path / "t.tfrecords"
    truncated.write_bytes(path.read_bytes()[: int(offsets[1, 0]) + 30])
    with pytest.raises(TFRecordError, match="truncated"):
        TFRecordReader(truncated)


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "a.tfrecords"
    with TFRecordWriter(path) as writer:
        writer.write_tile("a", b"old", 1, 1)
    before = path.read_bytes()

    def interrupted_write() -> None:
        with TFRecordWriter(path) as writer:
            writer.write_tile("a", b"new", 2, 2)
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.index.npz", "a.tfrecords"]
    with pytest.raises(TFRecordError, match="does not exist"):
        TFRecordReader(tmp_path / "missing.tfrecords")


def test_image_codec_round_trip():
    tile = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode_image(tile, "png")), tile)
    assert encode_image(tile, "JPEG", 80) == encode_image(tile, "jpg", 80)  # deterministic
    assert decode_image(encode_image(tile, "jpg")).shape == (16, 16, 3)


# ------------------------------------------------------------------------------------------
# The index is verified, not trusted (the cases adversarial testing found)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pixelnet():
    with registered(PIXELNET):
        yield histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)


def write_tiles(path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random 16 px PNG tiles at tile centres of a 256 px grid: (tiles, locations)."""
    rng = np.random.default_rng(n)
    tiles = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    locations = np.array([(128 + 256 * (i % 7), 128 + 256 * (i // 7)) for i in range(n)])
    with TFRecordWriter(path) as writer:
        for tile, (x, y) in zip(tiles, locations):
            writer.write_tile("x", encode_image(tile, "png"), x, y)
    return tiles, locations


def test_an_edited_index_location_is_refused_not_returned(pixelnet, tmp_path):
    path = tmp_path / "x.tfrecords"
    tiles, locations = write_tiles(path, 12)
    offsets, stored = read_index(index_path(path))
    stored[5] = (999_999, 4)
    np.savez(index_path(path), offsets, locations=stored)  # numpy keeps the '.npz' name

    expected = r"x\.tfrecords does not match its index.*record 5 holds the location \(1408, 128\)"
    with pytest.raises(TFRecordError, match=expected):
        TFRecordReader(path)
    with pytest.raises(TFRecordError, match=expected):
        OpenTFRecord(str(path))()  # what each engine worker opens
    with pytest.raises(HistobagError, match=r"x\.tfrecords does not match its index"):
        pixelnet(str(path), num_workers=0)

    # Rebuilding the index is an explicit choice; locations then come from the records.
    reader = TFRecordReader(path, rebuild_index=True)
    np.testing.assert_array_equal(reader.locations, locations)
    np.testing.assert_array_equal(read_index(index_path(path))[1], locations)
    features, coords = pixelnet(str(path), num_workers=0)
    np.testing.assert_array_equal(coords.numpy(), locations)
    assert features.shape == (12, PIXELNET.num_features)
    np.testing.assert_array_equal(reader.read_tiles(range(12)), tiles)


def test_a_file_truncated_at_a_record_boundary_is_refused(pixelnet, tmp_path, caplog):
    path = tmp_path / "x.tfrecords"
    tiles, locations = write_tiles(path, 43)
    offsets = TFRecordReader(path).offsets
    path.write_bytes(path.read_bytes()[: int(offsets[10, 0])])  # 10 whole records remain

    expected = (
        r"x\.tfrecords is shorter than its index x\.index\.npz says: the file holds 10 records "
        r".*the index lists 43 records.*truncated"
    )
    with pytest.raises(TFRecordError, match=expected):
        TFRecordReader(path)
    with pytest.raises(HistobagError, match=r"x\.tfrecords is shorter than its index"):
        pixelnet(str(path), num_workers=0)
    # Refused, not "rebuilt" with a log line.
    assert not [r for r in caplog.records if r.name.startswith("histobag.io")]
    assert read_index(index_path(path))[0].shape == (43, 2)  # the evidence is left in place

    # Documented limitation: without its index the shorter file cannot be told from a short one.
    moved = index_path(path).rename(tmp_path / "kept.npz")
    reader = TFRecordReader(path)
    assert len(reader) == 10
    np.testing.assert_array_equal(reader.locations, locations[:10])
    moved.rename(index_path(path))
    # ... and accepting it as it is takes an explicit rebuild.
    assert len(TFRecordReader(path, rebuild_index=True)) == 10
    np.testing.assert_array_equal(TFRecordReader(path).read_tiles(range(10)), tiles[:10])


def test_a_file_changed_after_opening_is_an_error_not_other_tiles(tmp_path):
    path = tmp_path / "x.tfrecords"
    write_tiles(path, 5)
    reader = TFRecordReader(path)
    original = path.read_bytes()

    # Same framing, another location: rewritten by another process after we opened it.
    data = bytearray(original)
    start = int(reader.offsets[2, 0])
    record = reader[2]
    moved = encode_example({**record, "loc_x": record["loc_x"] + 1})
    assert len(moved) == int(reader.offsets[2, 1]) - 16  # same varint size, same framing
    data[start : start + len(moved) + 16] = frame(moved)
    path.write_bytes(bytes(data))
    with pytest.raises(
        TFRecordError, match=r"x\.tfrecords: the record at byte offset .* now holds"
    ):
        reader.read_tiles([2])

    path.write_bytes(original[: int(reader.offsets[3, 0])])  # truncated after opening
    with pytest.raises(TFRecordError, match=r"x\.tfrecords"):
        reader.read_tiles([4])


def test_index_layouts_other_writers_produce(tmp_path):
    path = tmp_path / "x.tfrecords"
    _, locations = write_tiles(path, 4)
    offsets, _ = read_index(index_path(path))
    # An index without 'locations' (older slideflow): offsets are checked, locations read.
    np.savez(index_path(path), offsets)
    np.testing.assert_array_equal(TFRecordReader(path).locations, locations)
    # int32 offsets are the same numbers.
    np.savez(index_path(path), offsets.astype(np.int32), locations=locations)
    assert len(TFRecordReader(path)) == 4
    # Float offsets are not an index histobag or slideflow writes.
    np.savez(index_path(path), offsets.astype(float), locations=locations)
    with pytest.raises(TFRecordError, match=r"x\.tfrecords: Cannot read TFRecord index.*float64"):
        TFRecordReader(path)
    # slideflow saves the index of an empty TFRecord as a float64 (0,) array.
    empty = tmp_path / "empty.tfrecords"
    empty.write_bytes(b"")
    np.savez(index_path(empty), np.array([]))
    assert len(TFRecordReader(empty)) == 0
    np.savez(index_path(empty), offsets[:1])
    with pytest.raises(TFRecordError, match=r"empty\.tfrecords is shorter than its index"):
        TFRecordReader(empty)
