"""The ``dicom`` reader (wsidicom): DICOM WSI folders and files, tile for tile as OpenSlide's.

The fixtures are DICOM WSI written by wsidicom's own writer (``WsiDicom.save``) from a
pyramid of real histology (scikit-image's IHC sample) held in memory, through a small
wsidicom ``Source``: one slide JPEG-compressed like a scanner's, one uncompressed (its pixels
are then exactly the source's). OpenSlide 4 reads both, so every region is compared with
OpenSlide's for the same files.
"""

import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import openslide
import pydicom
import pytest
import torch
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid
from skimage.data import immunohistochemistry
from wsidicom import WsiDicom
from wsidicom.codec import Encoder
from wsidicom.geometry import Size, SizeMm
from wsidicom.instance import ImageData, WsiInstance
from wsidicom.metadata import (
    Equipment,
    Image,
    ImageType,
    Label,
    Objectives,
    OpticalPath,
    Patient,
    Pyramid,
    Series,
    Slide,
    SlideSample,
    Study,
    WsiMetadata,
)
from wsidicom.metadata.schema.dicom import WsiMetadataDicomSchema
from wsidicom.source import Source

import histobag
from histobag.errors import MissingDependencyError, SlideOpenError
from histobag.plugins import slide_reader_specs
from histobag.slide import WSI
from histobag.slide.readers import open_reader
from histobag.slide.readers.dicom_reader import DicomReader, is_dicom_file
from tests.core.bag_helpers import PIXELNET
from tests.core.toy_models import registered

MPP = 0.5
TILE = 96  # frame side: not a divisor of the level sizes, so edge frames are partial


class ArrayLevel(ImageData):
    """One pyramid level held in memory, cut into ``TILE`` frames (white beyond its edge)."""

    def __init__(self, pixels: np.ndarray, mpp: float, syntax) -> None:
        self._pixels, self._mpp, self._syntax = pixels, mpp, syntax
        self._photometric = "RGB" if syntax == ExplicitVRLittleEndian else "YBR_FULL_422"
        super().__init__(Encoder.create(syntax, 8, self._photometric))

    transfer_syntax = property(lambda self: self._syntax)
    image_size = property(lambda self: Size(self._pixels.shape[1], self._pixels.shape[0]))
    tile_size = property(lambda self: Size(TILE, TILE))
    pixel_spacing = property(lambda self: SizeMm(self._mpp / 1000, self._mpp / 1000))
    imaged_size = property(
        lambda self: SizeMm(
            self.image_size.width * self._mpp / 1000, self.image_size.height * self._mpp / 1000
        )
    )
    samples_per_pixel = property(lambda self: 3)
    photometric_interpretation = property(lambda self: self._photometric)
    bits = property(lambda self: 8)
    image_coordinate_system = property(lambda self: None)
    thread_safe = property(lambda self: True)
    lossy_compression = property(lambda self: None)
    transcoder = property(lambda self: None)

    def get_decoded_tile(self, tile_point, z, path, cache=True):
        frame = np.full((TILE, TILE, 3), 255, np.uint8)
        x, y = tile_point.x * TILE, tile_point.y * TILE
        part = self._pixels[y : y + TILE, x : x + TILE]
        frame[: part.shape[0], : part.shape[1]] = part
        return frame

    def get_encoded_tile(self, tile, z, path):
        return self.encoder.encode(self.get_decoded_tile(tile, z, path))


class ArraySource(Source):
    """A wsidicom source of in-memory levels (level 0 first), for ``WsiDicom(...).save``."""

    def __init__(self, levels: list[np.ndarray], syntax) -> None:
        super().__init__()
        metadata = WsiMetadata(
            study=Study(uid=generate_uid()),
            series=Series(uid=generate_uid()),
            patient=Patient(),
            equipment=Equipment(manufacturer="histobag tests"),
            slide=Slide(identifier="s", samples=[SlideSample(identifier="s", uid=generate_uid())]),
            pyramid=Pyramid(
                image=Image(),
                optical_paths=[OpticalPath(objective=Objectives(objective_power=20.0))],
                uid=generate_uid(),
            ),
            label=Label(),
            frame_of_reference_uid=generate_uid(),
            dimension_organization_uids=[generate_uid()],
        )
        width0 = levels[0].shape[1]
        self._levels = [
            WsiInstance.create_instance(
                ArrayLevel(pixels, MPP * width0 / pixels.shape[1], syntax),
                WsiMetadataDicomSchema().dump(metadata, ImageType.VOLUME),
                ImageType.VOLUME,
                0,
            )
            for pixels in levels
        ]

    base_dataset = property(lambda self: self._levels[0].dataset)
    level_instances = property(lambda self: self._levels)
    label_instances = property(lambda self: [])
    overview_instances = property(lambda self: [])
    thumbnail_instances = property(lambda self: [])
    annotation_instances = property(lambda self: [])

    def close(self) -> None:
        pass


@pytest.fixture(scope="module", autouse=True)
def dicom_reader():
    """Core registers the ``dicom`` reader (builtin.py)."""
    assert "dicom" in slide_reader_specs()


def _pyramid() -> list[np.ndarray]:
    """512 x 320 of real IHC histology, then downsampled by 4 and by 8 (block means)."""
    level0 = immunohistochemistry()[:320, :512]
    out = [level0]
    for factor in (4, 8):
        h, w = 320 // factor, 512 // factor
        blocks = level0.reshape(h, factor, w, factor, 3).mean(axis=(1, 3))
        out.append(blocks.round().astype(np.uint8))
    return out


def _level0_file(folder: Path) -> Path:
    """The file of the largest level (what one passes to OpenSlide)."""
    files = sorted(folder.glob("*.dcm"))
    return max(
        files, key=lambda f: pydicom.dcmread(f, stop_before_pixels=True).TotalPixelMatrixColumns
    )


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    """``{"jpeg": folder, "raw": folder}``: one DICOM WSI per folder."""
    root = tmp_path_factory.mktemp("dicom")
    levels = _pyramid()
    out = {}
    for name, syntax in (("jpeg", JPEGBaseline8Bit), ("raw", ExplicitVRLittleEndian)):
        with WsiDicom(ArraySource(levels, syntax)) as wsi:
            wsi.save(root / name, workers=1)
        out[name] = root / name
    return out


def _openslide_region(path: Path, location, level, size) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as osr:
        rgba = np.asarray(osr.read_region(location, level, size))
    return np.where(rgba[..., 3:] == 0, 255, rgba[..., :3]).astype(np.uint8)


def test_the_fixture_is_a_dicom_wsi_openslide_reads(slides):
    files = sorted(slides["raw"].glob("*.dcm"))
    assert len(files) == 3 and all(is_dicom_file(f) for f in files)
    with openslide.OpenSlide(str(_level0_file(slides["raw"]))) as osr:
        assert osr.properties["openslide.vendor"] == "dicom"
        assert osr.level_dimensions == ((512, 320), (128, 80), (64, 40))
        # Uncompressed: the pixels are exactly the pyramid's.
        level0 = np.asarray(osr.read_region((0, 0), 0, (512, 320)).convert("RGB"))
    assert np.array_equal(level0, _pyramid()[0])


@pytest.mark.parametrize("kind", ["jpeg", "raw"])
def test_the_reader_opens_a_folder_and_any_file_of_the_slide(slides, kind):
    folder = slides[kind]
    sources = [folder, *sorted(folder.glob("*.dcm"))]
    for source in sources:
        name, reader = open_reader(str(source), reader="dicom")
        try:
            assert name == "dicom" and isinstance(reader, DicomReader)
            assert reader.dimensions == (512, 320)
            assert reader.level_dimensions == ((512, 320), (128, 80), (64, 40))
            assert reader.level_downsamples == (1.0, 4.0, 8.0)
            assert reader.mpp == pytest.approx(MPP)
            assert reader.magnification == pytest.approx(20.0)
            assert reader.vendor == "dicom" and reader.version
            assert reader.properties["dicom.Manufacturer"] == "histobag tests"
        finally:
            reader.close()


@pytest.mark.parametrize("kind", ["jpeg", "raw"])
@pytest.mark.parametrize(
    ("level", "location", "size"),
    [
        (0, (100, 60), (150, 110)),  # inside, across frame borders
        (0, (450, 270), (100, 80)),  # across the bottom-right edge (partial edge frames)
        (0, (-30, -10), (64, 48)),  # across the top-left edge
        (1, (200, 120), (60, 40)),  # downsample 4, inside
        (1, (440, -20), (40, 30)),  # downsample 4, across two edges
        (2, (0, 0), (64, 40)),  # downsample 8, the whole level
        (2, (480, 296), (20, 20)),  # downsample 8, across the edge
        (0, (600, 400), (16, 16)),  # wholly outside: white
    ],
)
def test_regions_equal_openslides(slides, kind, level, location, size):
    level0 = _level0_file(slides[kind])
    expected = _openslide_region(level0, location, level, size)
    _, reader = open_reader(str(slides[kind]), reader="dicom")
    try:
        got = reader.read_region(location, level, size)
    finally:
        reader.close()
    assert got.dtype == np.uint8 and got.shape == (size[1], size[0], 3)
    assert np.array_equal(got, expected)


def test_wsi_tiles_through_the_reader_equal_openslides(slides):
    folder = slides["jpeg"]
    by_dicom = WSI(folder, tile_px=32, tile_um=64, reader="dicom", tissue=None)
    by_openslide = WSI(
        _level0_file(folder), tile_px=32, tile_um=64, reader="openslide", tissue=None
    )
    try:
        assert by_dicom.reader_name == "dicom" and by_openslide.reader_name == "openslide"
        assert len(by_dicom) == len(by_openslide) > 4
        assert by_dicom.level == by_openslide.level == 1  # 128 px at 0.5 µm: the 4x level
        assert np.array_equal(by_dicom.coords, by_openslide.coords)
        everything = np.arange(len(by_dicom))
        tiles = by_dicom.read_tiles(everything)
        assert np.array_equal(tiles, by_openslide.read_tiles(everything))
        # A worker process gets the WSI pickled and reopens it with the same reader.
        again = pickle.loads(pickle.dumps(by_dicom))
        assert again.reader_name == "dicom"
        assert np.array_equal(again.read_tiles(everything), tiles)
        again.close()
    finally:
        by_dicom.close()
        by_openslide.close()


def test_auto_uses_openslide_for_a_file_and_the_dicom_reader_for_a_folder(slides):
    name, reader = open_reader(str(slides["jpeg"]))
    reader.close()
    assert name == "dicom"  # OpenSlide opens files only
    name, reader = open_reader(str(_level0_file(slides["jpeg"])))
    reader.close()
    assert name == "openslide"  # OpenSlide stays the default where it reads the file


def test_bags_from_dicom_folders_equal_bags_from_openslide(slides, tmp_path):
    bags = {}
    with registered(PIXELNET):
        extractor = histobag.build_feature_extractor(
            "pixelnet", device="cpu", mixed_precision=False
        )
        for reader, paths in (
            ("dicom", [slides["jpeg"]]),
            ("openslide", [_level0_file(slides["jpeg"])]),
        ):
            dataset = histobag.Dataset(paths, tile_px=16, tile_um=32, reader=reader)
            report = histobag.generate_feature_bags(
                extractor, dataset, tmp_path / reader, num_workers=0, progress=False
            )
            (slide,) = report.done
            assert report.ok and report.done[slide] > 4
            bags = {
                **bags,
                reader: torch.load(tmp_path / reader / f"{slide}.pt", weights_only=True),
            }
    assert torch.equal(bags["dicom"], bags["openslide"])


def test_a_file_opens_only_its_own_series(slides, tmp_path):
    shared = tmp_path / "two-slides"
    shared.mkdir()
    for kind in ("jpeg", "raw"):
        for file in slides[kind].glob("*.dcm"):
            shutil.copy(file, shared / f"{kind}-{file.name}")
    raw_file = sorted(shared.glob("raw-*.dcm"))[-1]  # any file of the slide
    _, reader = open_reader(str(raw_file), reader="dicom")
    try:
        level0 = reader.read_region((0, 0), 0, (512, 320))
    finally:
        reader.close()
    assert np.array_equal(level0, _pyramid()[0])  # the uncompressed slide, not the JPEG one


def test_what_is_not_a_dicom_slide_is_refused_clearly(tmp_path):
    not_dicom = tmp_path / "slide.dcm"
    not_dicom.write_bytes(b"\0" * 200)
    with pytest.raises(SlideOpenError, match="not a DICOM file"):
        DicomReader(str(not_dicom))
    with pytest.raises(SlideOpenError, match="holds no DICOM file"):
        DicomReader(str(tmp_path))
    with pytest.raises(SlideOpenError, match="does not exist"):
        DicomReader(str(tmp_path / "missing"))


def test_without_wsidicom_the_error_names_the_extra(slides, monkeypatch):
    monkeypatch.setitem(sys.modules, "wsidicom", None)  # makes `import wsidicom` raise
    with pytest.raises(MissingDependencyError, match=r"histobag\[dicom\]"):
        DicomReader(str(slides["raw"]))


def test_a_folder_of_dicom_slides_is_a_dataset(slides, tmp_path):
    """A dataset folder whose sub-folders each hold one DICOM WSI (only .dcm files) lists one
    slide per sub-folder, opened by the dicom reader; a folder mixing .dcm with other files
    is not taken for a slide."""
    root = tmp_path / "cohort"
    for name, folder in slides.items():
        shutil.copytree(folder, root / f"case-{name}")
    mixed = root / "mixed"
    shutil.copytree(slides["raw"], mixed)
    (mixed / "notes.txt").write_text("not a slide")
    dataset = histobag.Dataset(root, tile_px=16, tile_um=32)
    assert dataset.slides() == ["case-jpeg", "case-raw"]
    assert dataset.wsi("case-raw").reader_name == "dicom"
