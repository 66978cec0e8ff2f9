"""The ``dicom`` reader on DICOMweb URLs: a series served by a local DICOMweb server
(tests/core/dicomweb_server.py) reads tile for tile as the same files from their folder.

The slides are test_reader_dicom.py's: real IHC histology written by wsidicom, one
JPEG-compressed (what a PACS holds) and one uncompressed.
"""

import pickle
import socket

import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from wsidicom import WsiDicom

import histobag
from histobag.errors import SlideOpenError
from histobag.plugins import slide_reader_specs
from histobag.slide import WSI
from histobag.slide.readers import open_reader
from histobag.slide.readers.dicom_reader import DicomReader
from histobag.slide.readers.dicomweb import TOKEN_ENV, parse_dicomweb_url
from tests.core.bag_helpers import PIXELNET
from tests.core.dicomweb_server import DicomWebServer
from tests.core.test_reader_dicom import MPP, ArraySource, _pyramid
from tests.core.toy_models import registered


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """``{"jpeg": folder, "raw": folder}``: one DICOM WSI per folder."""
    root = tmp_path_factory.mktemp("dicomweb")
    out = {}
    for name, syntax in (("jpeg", JPEGBaseline8Bit), ("raw", ExplicitVRLittleEndian)):
        with WsiDicom(ArraySource(_pyramid(), syntax)) as wsi:
            wsi.save(root / name, workers=1)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def server(slides):
    with DicomWebServer(slides.values(), prefix="pacs/dicom-web") as running:
        yield running


@pytest.fixture(autouse=True)
def no_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def _uids(folder):
    header = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    return str(header.StudyInstanceUID), str(header.SeriesInstanceUID)


def _url(server, folder, scheme="dicomweb+http"):
    study, series = _uids(folder)
    service = server.base.split("://", 1)[1]
    return f"{scheme}://{service}/studies/{study}/series/{series}"


def test_the_dicom_reader_claims_dicomweb_urls():
    spec = slide_reader_specs()["dicom"]
    assert spec.claims("dicomweb+https://pacs.example.org/studies/1.2/series/1.3")
    assert spec.claims("DICOMweb+http://pacs.example.org/studies/1.2/series/1.3")
    assert not spec.claims("https://pacs.example.org/studies/1.2/series/1.3")


def test_the_url_names_the_service_root_and_the_uids():
    got = parse_dicomweb_url("dicomweb+https://h.org:8042/a/dicom-web/studies/1.22.3/series/4.5/")
    assert (got.service, got.study, got.series) == (
        "https://h.org:8042/a/dicom-web",
        "1.22.3",
        "4.5",
    )
    got = parse_dicomweb_url("dicomweb+http://h.org/studies/1.2/series/3")
    assert (got.service, got.study, got.series) == ("http://h.org", "1.2", "3")


@pytest.mark.parametrize(
    "url",
    [
        "dicomweb+https://h.org/studies/1.2",  # no series
        "dicomweb+https://h.org/studies/1.2/series/3.4/instances/5.6",  # an instance
        "dicomweb+https://h.org/studies/1.2/series/a.b",  # not UIDs
        "dicomweb+https:///studies/1.2/series/3.4",  # no host
        "dicomweb+https://h.org/studies/1.2/series/3.4?x=1",
    ],
)
def test_a_malformed_url_says_the_expected_form(url):
    with pytest.raises(SlideOpenError, match="expected dicomweb"):
        DicomReader(url)


@pytest.mark.parametrize("kind", ["jpeg", "raw"])
def test_auto_opens_the_url_with_the_dicom_reader(server, slides, kind):
    name, reader = open_reader(_url(server, slides[kind]))
    try:
        assert name == "dicom" and isinstance(reader, DicomReader)
        assert reader.level_dimensions == ((512, 320), (128, 80), (64, 40))
        assert reader.level_downsamples == (1.0, 4.0, 8.0)
        assert reader.mpp == pytest.approx(MPP)
        assert reader.magnification == pytest.approx(20.0)
        assert reader.properties["dicom.Manufacturer"] == "histobag tests"
        assert reader.properties["dicom.SeriesInstanceUID"] == _uids(slides[kind])[1]
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
    ],
)
def test_regions_through_the_url_equal_the_folders(server, slides, kind, level, location, size):
    by_url, by_folder = DicomReader(_url(server, slides[kind])), DicomReader(str(slides[kind]))
    try:
        got = by_url.read_region(location, level, size)
        expected = by_folder.read_region(location, level, size)
    finally:
        by_url.close()
        by_folder.close()
    assert got.shape == (size[1], size[0], 3) and got.std() > 0
    assert np.array_equal(got, expected)


def test_only_the_frames_of_a_region_are_fetched(server, slides):
    reader = DicomReader(_url(server, slides["jpeg"]))
    try:
        before = len(server.requests)
        # 96 px frames, 6 by 4 at level 0: this square spans the first two of rows 1 and 2.
        reader.read_region((90, 90), 0, (20, 20))
        fetched = [path for path, _ in server.requests[before:]]
    finally:
        reader.close()
    assert fetched and all("/frames/" in path for path in fetched)
    numbers = {n for path in fetched for n in path.rsplit("/", 1)[1].split(",")}
    assert numbers == {"1", "2", "7", "8"}  # 1-based, row by row


def test_wsi_tiles_from_the_url_equal_the_folders_and_survive_pickling(server, slides):
    by_url = WSI(_url(server, slides["jpeg"]), tile_px=32, tile_um=64, tissue=None)
    by_folder = WSI(slides["jpeg"], tile_px=32, tile_um=64, reader="dicom", tissue=None)
    try:
        assert by_url.reader_name == "dicom"
        assert by_url.name == _uids(slides["jpeg"])[1]  # the series UID, whole
        assert len(by_url) == len(by_folder) > 4 and by_url.level == by_folder.level == 1
        assert np.array_equal(by_url.coords, by_folder.coords)
        everything = np.arange(len(by_url))
        tiles = by_url.read_tiles(everything)
        assert np.array_equal(tiles, by_folder.read_tiles(everything))
        # A worker process gets the WSI pickled and reopens the URL.
        again = pickle.loads(pickle.dumps(by_url))
        assert again.reader_name == "dicom"
        assert np.array_equal(again.read_tiles(everything), tiles)
        again.close()
    finally:
        by_url.close()
        by_folder.close()


def test_bags_from_the_url_equal_bags_from_the_folder(server, slides, tmp_path):
    url = _url(server, slides["jpeg"])
    series = _uids(slides["jpeg"])[1]
    bags = {}
    with registered(PIXELNET):
        extractor = histobag.build_feature_extractor(
            "pixelnet", device="cpu", mixed_precision=False
        )
        for name, source in (("url", url), ("folder", slides["jpeg"])):
            dataset = histobag.Dataset([source], tile_px=16, tile_um=32, reader="dicom")
            report = histobag.generate_feature_bags(
                extractor, dataset, tmp_path / name, num_workers=0, progress=False
            )
            (slide,) = report.done
            assert report.ok and report.done[slide] > 4
            bags[name] = torch.load(tmp_path / name / f"{slide}.pt", weights_only=True)
            if name == "url":
                assert slide == series  # a DICOMweb slide is named by its series UID
    assert torch.equal(bags["url"], bags["folder"])


def test_a_missing_series_or_a_wrong_service_is_refused_clearly(server, slides):
    study, _ = _uids(slides["jpeg"])
    service = server.base.split("://", 1)[1]
    missing = f"dicomweb+http://{service}/studies/{study}/series/1.2.3.4"
    with pytest.raises(SlideOpenError, match=r"series 1\.2\.3\.4 .* holds no whole-slide image"):
        open_reader(missing)
    wrong_prefix = _url(server, slides["jpeg"]).replace("/pacs/", "/other/")
    with pytest.raises(SlideOpenError, match=r"HTTP 404 .* check the service prefix"):
        open_reader(wrong_prefix)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = f"dicomweb+http://127.0.0.1:{port}/studies/{study}/series/1.2"
    with pytest.raises(SlideOpenError, match=f"cannot reach http://127.0.0.1:{port}"):
        open_reader(unreachable)


def test_the_token_is_sent_as_a_bearer_header(slides, monkeypatch):
    with DicomWebServer([slides["jpeg"]], token="s3cret") as guarded:
        url = _url(guarded, slides["jpeg"])
        with pytest.raises(SlideOpenError, match=f"HTTP 401.*set {TOKEN_ENV}.*is not set"):
            DicomReader(url)
        monkeypatch.setenv(TOKEN_ENV, "wrong")
        with pytest.raises(SlideOpenError, match=r"HTTP 401.*was refused") as refused:
            DicomReader(url)
        assert "wrong" not in str(refused.value)  # the token is never shown
        monkeypatch.setenv(TOKEN_ENV, "s3cret")
        guarded.requests.clear()
        reader = DicomReader(url)
        try:
            assert reader.read_region((0, 0), 0, (200, 200)).std() > 0
        finally:
            reader.close()
    assert guarded.requests and all(
        headers.get("Authorization") == "Bearer s3cret" for _, headers in guarded.requests
    )
