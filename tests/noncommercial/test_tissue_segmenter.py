"""The ``grandqc`` tissue detector against GrandQC's own inference loop.

A random UNet++ (segmentation_models_pytorch, as GrandQC builds it) is saved as GrandQC
publishes its weights (``torch.save`` of the state dict, ``Tissue_Detection_MPP10.pth``), into
a local Hugging Face cache made here. The reference below is GrandQC's ``wsi_tis_detect.py``
loop written again for the test: OpenCV's JPEG round trip, smp's ImageNet preprocessing in
float64, one tile at a time, the last tile aligned to the edge and only its overhang kept,
argmax. Tiles are 128 px instead of 512 (the network is fully convolutional) so that small
thumbnails still span several tiles and the tests stay fast on a CPU.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import warnings
from pathlib import Path

import cv2
import huggingface_hub
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from PIL import Image

import histobag
from histobag.bags.config import read_config
from histobag.errors import CheckpointMismatchError, MissingDependencyError, OfflineWeightsError
from histobag.slide import WSI
from histobag.slide.errors import TileSettingsError
from histobag.slide.samples import sample_slide
from histobag.slide.tissue import resolve_tissue_detector
from histobag_noncommercial import grandqc_tissue
from tests.core.bag_helpers import PIXELNET
from tests.core.toy_models import registered
from tests.helpers import histology_image
from tests.parity import assert_imports_no_heavy_modules

REPO, FILENAME = "MahmoodLab/hest-tissue-seg", "Tissue_Detection_MPP10.pth"
TILE = 64
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
DEFAULT_KWARGS = {"weights": None, "device": "cpu", "jpeg_quality": 80}


def glass_with_tissue(height: int, width: int) -> np.ndarray:
    """An 8-bit RGB thumbnail: off-white glass with a piece of real histology on it."""
    image = np.full((height, width, 3), (236, 234, 238), dtype=np.uint8)
    piece = histology_image()[: height * 2 // 3, : width * 3 // 5]
    top, left = height // 6, width // 5
    image[top : top + piece.shape[0], left : left + piece.shape[1]] = piece
    return image


def unetplusplus() -> torch.nn.Module:
    """smp's UNet++ as GrandQC builds it (random weights)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # smp 0.5+ prefers ``tu-`` encoders
        return smp.UnetPlusPlus(
            encoder_name="timm-efficientnet-b0", encoder_weights=None, classes=2, activation=None
        )


def reference_network(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """GrandQC's network loaded with plain ``load_state_dict``."""
    model = unetplusplus()
    model.load_state_dict(state_dict)
    return model.eval()


def opencv_jpeg(image: np.ndarray) -> np.ndarray:
    """GrandQC's JPEG round trip (quality 80) of an RGB array through OpenCV."""
    ok, encoded = cv2.imencode(".jpg", image, [int(cv2.IMWRITE_JPEG_QUALITY), 80])
    assert ok
    return cv2.imdecode(encoded, 1)  # the array's channel order is kept, as in GrandQC


def reference_logits(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """GrandQC's tiled inference on an image of at least one tile per side: (2, H, W)."""
    height, width = image.shape[:2]
    columns, rows = width // TILE, height // TILE
    over_w, over_h = width - columns * TILE, height - rows * TILE
    stripes = []
    for r in range(rows + 1):
        top = r * TILE if r < rows else height - TILE
        pieces = []
        for c in range(columns + 1):
            left = c * TILE if c < columns else width - TILE
            crop = image[top : top + TILE, left : left + TILE]
            x = ((crop / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype("float32")
            out = model.predict(torch.from_numpy(x)[None])[0].numpy()
            pieces.append(out[:, :, TILE - over_w :] if c == columns else out)
        stripe = np.concatenate(pieces, axis=2)
        stripes.append(stripe[:, TILE - over_h :] if r == rows else stripe)
    return np.concatenate(stripes, axis=1)


def reference_margin(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """GrandQC's tissue (class 0) minus background logit of a 10 µm/px image (argmax 0,
    tissue, where it is >= 0). The image is JPEG round-tripped whole, as GrandQC does, then
    padded with glass to a tile where it is smaller."""
    image = opencv_jpeg(image)
    height, width = image.shape[:2]
    padded = np.full((max(height, TILE), max(width, TILE), 3), 255, dtype=np.uint8)
    padded[:height, :width] = image
    logits = reference_logits(model, padded)[:, :height, :width]
    return logits[0] - logits[1]


def assert_same_mask(mask: np.ndarray, margin: np.ndarray) -> None:
    """``mask`` is GrandQC's argmax, but for pixels where the two logits tie to float32
    rounding (the reference normalises in float64, as smp's preprocessing does)."""
    assert mask.dtype == bool and mask.shape == margin.shape
    differ = mask != (margin >= 0)
    assert np.all(np.abs(margin[differ]) <= 1e-4 * np.abs(margin).max()), margin[differ]


@pytest.fixture(scope="module", autouse=True)
def small_tiles():
    """64 px tiles, one math thread: many tiny convolutions run fastest on one thread (with
    two, OpenMP's spin-waiting made these tests several times slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grandqc_tissue, "TILE_PX", TILE)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    """Random weights whose class boundary falls inside the test image (both classes occur)."""
    torch.manual_seed(0)
    model = unetplusplus().eval()
    with torch.no_grad():
        model.segmentation_head[0].weight.mul_(20)
        image = glass_with_tissue(TILE, TILE)
        x = torch.from_numpy(((image / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype("float32"))
        logits = model.predict(x[None])[0]
        model.segmentation_head[0].bias[0] -= (logits[0] - logits[1]).median()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def official_file(state_dict, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grandqc") / FILENAME
    torch.save(state_dict, path)
    return path


@pytest.fixture(scope="module")
def reference(state_dict) -> torch.nn.Module:
    return reference_network(state_dict)


@pytest.fixture(scope="module")
def detector(official_file) -> grandqc_tissue.GrandQCDetector:
    return grandqc_tissue.build_grandqc(weights=str(official_file))


#: A thumbnail as WSI gives it (8 µm/px) and its size at 10 µm/px: 2 x 2 tiles of 64 px, the
#: last row and column overlapping the ones before.
THUMBNAIL_SHAPE, AT_10_SIZE = (100, 125), (100, 80)


@pytest.fixture(scope="module")
def thumbnail() -> np.ndarray:
    return glass_with_tissue(*THUMBNAIL_SHAPE)


@pytest.fixture(scope="module")
def at_10(thumbnail) -> np.ndarray:
    """The thumbnail at 10 µm/px (Lanczos, as GrandQC's OpenSlide thumbnails are made)."""
    resized = Image.fromarray(thumbnail).resize(AT_10_SIZE, Image.Resampling.LANCZOS)
    return np.asarray(resized)


@pytest.fixture(scope="module")
def margin_at_10(reference, at_10) -> np.ndarray:
    return reference_margin(reference, at_10)


@pytest.fixture
def hf_cache(official_file, tmp_path, monkeypatch) -> Path:
    """A Hugging Face cache holding the file as REPO/FILENAME on ``main``, offline."""
    repo_dir = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
    commit = hashlib.sha1(b"grandqc test").hexdigest()
    blob = repo_dir / "blobs" / hashlib.sha256(official_file.read_bytes()).hexdigest()
    blob.parent.mkdir(parents=True)
    shutil.copyfile(official_file, blob)
    snapshot = repo_dir / "snapshots" / commit / FILENAME
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(Path("..", "..", "blobs", blob.name))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    use_cache(tmp_path / "hub", monkeypatch)
    return tmp_path / "hub"


def use_cache(cache: Path, monkeypatch) -> None:
    """Weights from ``cache`` only: never the real Hub."""
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True)
def fresh_download_cache():
    """The detector remembers the cached file per process; each test has its own cache."""
    grandqc_tissue._download.cache_clear()
    yield
    grandqc_tissue._download.cache_clear()


def test_mask_equals_grandqc_loop_over_several_tiles(detector, at_10, margin_at_10):
    assert 0.1 < np.mean(margin_at_10 >= 0) < 0.9  # both classes: the comparison means something
    assert_same_mask(detector(at_10, mpp=10.0), margin_at_10)


def test_thumbnail_smaller_than_a_tile_is_padded_with_glass(detector, reference):
    image = glass_with_tissue(40, 50)
    assert_same_mask(detector(image, mpp=10.0), reference_margin(reference, image))


def test_thumbnail_at_8_um_is_resampled_to_10_and_back(detector, thumbnail, margin_at_10):
    mask = detector(thumbnail, mpp=8.0)
    expected = Image.fromarray(margin_at_10 >= 0).resize(
        THUMBNAIL_SHAPE[::-1], Image.Resampling.NEAREST
    )
    assert mask.shape == THUMBNAIL_SHAPE
    # Only pixels along outlines may differ (bilinear margin vs nearest-neighbour mask).
    assert np.mean(mask != np.asarray(expected)) < 0.05, np.mean(mask != np.asarray(expected))


def test_jpeg_round_trip_is_opencvs_on_an_rgb_array():
    image = glass_with_tissue(120, 200)
    np.testing.assert_array_equal(grandqc_tissue.jpeg_round_trip(image), opencv_jpeg(image))


def test_the_detector_needs_the_thumbnails_resolution(detector):
    with pytest.raises(ValueError, match="mpp"):
        detector(glass_with_tissue(40, 50))


def test_official_weights_come_from_the_hugging_face_cache_and_are_recorded(
    hf_cache, official_file
):
    detector, record = resolve_tissue_detector("grandqc")
    assert record == {"name": "grandqc", "kwargs": DEFAULT_KWARGS}
    assert detector.weights_source == f"hf://{REPO}/{FILENAME}"
    assert detector.weights_sha256 == hashlib.sha256(official_file.read_bytes()).hexdigest()


def test_wsi_runs_the_detector_end_to_end_and_bags_record_it(hf_cache, reference, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    slide = sample_slide(slides / "slide-0.svs", size=(1024, 768), seed=1, levels=2)
    wsi = WSI(slide, tile_px=16, tile_um=128, tissue="grandqc")
    assert wsi.tissue_record == {"name": "grandqc", "kwargs": DEFAULT_KWARGS}

    def grandqc_by_hand(thumbnail, mpp):
        at_10 = grandqc_tissue.resample(thumbnail, mpp)
        assert at_10.shape[:2] == (38, 51)  # 768 x 1024 px at 0.5 µm/px: one tile
        margin = Image.fromarray(reference_margin(reference, at_10), mode="F")
        margins.append(np.asarray(margin.resize(thumbnail.shape[1::-1], Image.BILINEAR)))
        return margins[-1] >= 0

    margins: list[np.ndarray] = []
    by_hand = WSI(slide, tile_px=16, tile_um=128, tissue=grandqc_by_hand)
    assert wsi.tissue_mask.shape == by_hand.tissue_mask.shape == (48, 64)  # 8 µm/px
    assert_same_mask(wsi.tissue_mask, margins[0])
    assert wsi.coords.tolist() == by_hand.coords.tolist()

    with registered(PIXELNET):
        extractor = histobag.build_feature_extractor("pixelnet", device="cpu")
        dataset = histobag.Dataset(slides, None, 16, 128, tissue="grandqc")
        report = dataset.generate_feature_bags(
            extractor, tmp_path / "bags", num_workers=0, progress=False
        )
    assert report.ok
    assert read_config(tmp_path / "bags")["tissue"] == {"name": "grandqc", "kwargs": DEFAULT_KWARGS}


def test_without_segmentation_models_pytorch_the_error_names_the_extra(official_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    with pytest.raises(MissingDependencyError, match=r"histobag-noncommercial\[grandqc\]") as info:
        resolve_tissue_detector({"name": "grandqc", "kwargs": {"weights": str(official_file)}})
    assert info.value.extra == "grandqc"
    assert info.value.module == "segmentation_models_pytorch"


def test_weights_missing_from_an_offline_cache_say_what_to_do(tmp_path, monkeypatch):
    use_cache(tmp_path / "empty", monkeypatch)
    with pytest.raises(OfflineWeightsError) as info:
        resolve_tissue_detector("grandqc")
    message = str(info.value)
    assert f"{REPO}/{FILENAME}" in message and "'weights': '/path/to/" in message
    assert "build_feature_extractor" not in message  # a detector is not an extractor


def test_a_wrong_checkpoint_is_refused_naming_the_keys(state_dict, tmp_path):
    broken = dict(state_dict)
    del broken["segmentation_head.0.bias"]
    torch.save(broken, tmp_path / FILENAME)
    with pytest.raises(CheckpointMismatchError, match=r"segmentation_head\.0\.bias"):
        grandqc_tissue.build_grandqc(weights=str(tmp_path))  # a folder holding the file


@pytest.mark.parametrize(
    "kwargs",
    [{"jpeg_quality": 0}, {"jpeg_quality": 80.5}, {"device": "nowhere"}, {"weights": 3}],
)
def test_bad_arguments_are_tile_settings_errors(kwargs):
    with pytest.raises(TileSettingsError, match="grandqc"):
        resolve_tissue_detector({"name": "grandqc", "kwargs": kwargs})


def test_listing_the_detector_imports_no_torch():
    assert_imports_no_heavy_modules(
        "histobag_noncommercial.tissue_specs", "torch", "segmentation_models_pytorch"
    )
