"""The ``grandqc`` tissue detector: GrandQC's tissue segmentation network.

GrandQC (Weng et al., Nature Communications 2024, doi:10.1038/s41467-024-54769-y;
github.com/cpath-ukk/grandqc) segments tissue with a UNet++ on an EfficientNet-B0 encoder
(segmentation_models_pytorch's ``timm-efficientnet-b0``) with two output classes, class 0
being tissue and class 1 background. Its weights, ``Tissue_Detection_MPP10.pth``, are a plain
state dict under CC BY-NC-SA 4.0 (non-commercial use only), published on Zenodo and on the
Hugging Face Hub (:data:`~histobag_noncommercial.tissue_specs.GRANDQC_REPO`, where TRIDENT
loads them). They are found the way extractor weights are: the Hugging Face cache, a download,
or ``weights=`` a local file or a folder holding it.

What :class:`GrandQCDetector` does with a thumbnail at ``mpp`` µm/px, as GrandQC's
``wsi_tis_detect.py`` does with a slide:

1. Resample it to :data:`MODEL_MPP` (10 µm/px, the resolution GrandQC was trained at) with
   Lanczos filtering.
2. Compress it to JPEG at quality 80 and decode it again: GrandQC's training images were JPEG
   compressed, and its authors note the network works worse without. GrandQC encodes its RGB
   array with OpenCV, which reads the channels as BGR; :func:`jpeg_round_trip` reproduces that
   byte for byte with Pillow by swapping the channels around the round trip.
3. Scale to [0, 1] and normalise with the ImageNet mean and standard deviation.
4. Cut :data:`TILE_PX` (512) pixel tiles left to right and top to bottom; the last tile of a
   row or column is aligned to the image's edge, and each pixel keeps the prediction of the
   first tile that covers it (GrandQC keeps only the overhang of the last tile). An image
   smaller than a tile is padded with white glass on the right and bottom (GrandQC's crop pads
   with black on the left and top), and the padding is cut off the result.
5. Tissue is where the network's class-0 logit is at least its class-1 logit (GrandQC's
   argmax). Back on the thumbnail's grid, the difference of the two logits is resized
   bilinearly and tissue is where it is at least 0; at 10 µm/px this is the argmax itself.

segmentation_models_pytorch is an optional dependency (the ``grandqc`` extra), imported when
the detector is built. Each weights file is loaded once per process and device.
"""

from __future__ import annotations

import functools
import io
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from histobag.errors import MissingDependencyError, WeightsNotFoundError
from histobag.extractors import weights as wt
from histobag_noncommercial.tissue_specs import GRANDQC_FILENAME, GRANDQC_REPO

__all__ = [
    "ENCODER",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "JPEG_QUALITY",
    "MODEL_MPP",
    "TILE_PX",
    "GrandQCDetector",
    "build_grandqc",
    "build_network",
    "jpeg_round_trip",
    "resample",
    "tile_starts",
]

#: The registered name.
NAME = "grandqc"
#: segmentation_models_pytorch's name of GrandQC's encoder.
ENCODER = "timm-efficientnet-b0"
#: Resolution (µm per pixel) GrandQC's tissue detector was trained and runs at.
MODEL_MPP = 10.0
#: Side of the tiles the network runs on.
TILE_PX = 512
#: JPEG quality of GrandQC's training images, reproduced before inference.
JPEG_QUALITY = 80
#: Tiles run through the network at once.
BATCH_TILES = 4
#: The encoder's ImageNet statistics, applied to pixels scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The glass colour padding a thumbnail smaller than a tile.
_PAD_VALUE = 255
#: Class index of tissue in the network's output (class 1 is background).
_TISSUE = 0


def _smp() -> Any:
    """segmentation_models_pytorch, or an error naming the extra that installs it.

    Raises:
        MissingDependencyError: It is not installed.
    """
    try:
        import segmentation_models_pytorch
    except ImportError as exc:
        raise MissingDependencyError(
            f"The {NAME!r} tissue detector runs GrandQC's network, built with "
            "segmentation_models_pytorch, which is not installed. Install it with: "
            'pip install "histobag-noncommercial[grandqc]"',
            module="segmentation_models_pytorch",
            extra="grandqc",
        ) from exc
    return segmentation_models_pytorch


def build_network() -> torch.nn.Module:
    """GrandQC's tissue network with random weights: UNet++ on ``timm-efficientnet-b0``, two
    classes, no activation (logits), as ``wsi_tis_detect.py`` builds it.

    Raises:
        MissingDependencyError: segmentation_models_pytorch is not installed.
    """
    smp = _smp()
    with warnings.catch_warnings():
        # smp 0.5+ deprecates the ``timm-`` encoders for ``tu-`` ones, whose keys differ from
        # those of GrandQC's checkpoint; the ``timm-`` one is the network GrandQC trained.
        warnings.simplefilter("ignore", DeprecationWarning)
        return smp.UnetPlusPlus(
            encoder_name=ENCODER, encoder_weights=None, in_channels=3, classes=2, activation=None
        )


def _weights_file(weights: str | None) -> tuple[Path, str]:
    """The checkpoint to load and where it came from (a path or ``hf://`` address).

    Raises:
        WeightsError: Not found, not downloadable or not in the cache.
    """
    if weights is None:
        path = _download(wt.HubFile(GRANDQC_REPO, GRANDQC_FILENAME))
        return path, f"hf://{GRANDQC_REPO}/{GRANDQC_FILENAME}"
    path = Path(weights).expanduser().resolve()
    if not path.exists():
        raise WeightsNotFoundError(
            f"Weights file of the {NAME!r} tissue detector not found: {weights}. Check the "
            "path passed as weights=."
        )
    if path.is_dir():
        path = wt.checkpoint_in_folder(path, GRANDQC_FILENAME, model=NAME)
    return path, str(path)


@functools.cache
def _download(hub: wt.HubFile) -> Path:
    """The cached file of ``hub``, looked up once per process (one WSI builds one detector)."""
    return wt.download(
        hub,
        model=NAME,
        pass_file=(
            f"tissue={{'name': {NAME!r}, 'kwargs': {{'weights': '/path/to/{hub.filename}'}}}}"
        ),
    )


@functools.lru_cache(maxsize=4)
def _load(path: str, stamp: tuple[int, int], source: str, device: str) -> torch.nn.Module:
    """GrandQC's network with the weights of ``path`` on ``device``, in eval mode.

    ``stamp`` (modification time and size) makes a rewritten file load again.
    """
    del stamp  # part of the cache key only
    network = build_network()
    state_dict = wt.unwrap(wt.read_checkpoint(path), ("state_dict",))
    wt.load_strict(network, state_dict, source=source, model=NAME)
    return network.to(device).eval()


def resample(thumbnail: np.ndarray, mpp: float, target_mpp: float = MODEL_MPP) -> np.ndarray:
    """``thumbnail`` (uint8 (H, W, 3) at ``mpp`` µm/px) at ``target_mpp``, Lanczos filtered.

    The size is rounded to whole pixels (at least 1); an image already at that size is
    returned as is.
    """
    height, width = thumbnail.shape[:2]
    scale = mpp / target_mpp
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return thumbnail
    resized = Image.fromarray(thumbnail).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(resized)


def jpeg_round_trip(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """``rgb`` (uint8 (H, W, 3)) encoded to JPEG at ``quality`` and decoded, as GrandQC does.

    GrandQC passes an RGB array to OpenCV, which encodes it as if it were BGR; Pillow, given
    the channels reversed, writes the same file (libjpeg's defaults: 4:2:0 chroma, the
    standard tables at that quality), so the result equals GrandQC's.
    """
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[..., ::-1])).save(
        buffer, format="JPEG", quality=quality
    )
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.ascontiguousarray(np.asarray(decoded.convert("RGB"))[..., ::-1])


def tile_starts(length: int, tile: int) -> list[int]:
    """Where GrandQC's tiles start along an axis of ``length`` pixels (``length >= tile``):
    every ``tile`` pixels, then one tile aligned to the end if pixels are left over."""
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) → float32 (3, H, W): scaled to [0, 1], ImageNet-normalised."""
    x = rgb.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _logit_margin(network: torch.nn.Module, image: np.ndarray, device: str) -> np.ndarray:
    """Per pixel, the tissue logit minus the background logit of GrandQC's tiled inference
    on ``image`` (uint8 (H, W, 3) at 10 µm/px, already JPEG round-tripped)."""
    tile = TILE_PX
    height, width = image.shape[:2]
    padded = np.full((max(height, tile), max(width, tile), 3), _PAD_VALUE, dtype=np.uint8)
    padded[:height, :width] = image
    x = torch.from_numpy(_normalise(padded))
    ys, xs = tile_starts(padded.shape[0], tile), tile_starts(padded.shape[1], tile)
    # Each pixel keeps the first tile's prediction: a tile owns what lies past the previous one.
    owned_y = [(y, max(y, prev + tile) - y) for prev, y in zip([-tile, *ys], ys)]
    owned_x = [(x0, max(x0, prev + tile) - x0) for prev, x0 in zip([-tile, *xs], xs)]
    tiles = [(y, x0, oy, ox) for y, oy in owned_y for x0, ox in owned_x]
    margin = np.empty(padded.shape[:2], dtype=np.float32)
    with torch.inference_mode():
        for first in range(0, len(tiles), BATCH_TILES):
            batch = tiles[first : first + BATCH_TILES]
            inputs = torch.stack([x[:, y : y + tile, x0 : x0 + tile] for y, x0, _, _ in batch])
            logits = network(inputs.to(device)).float().cpu()
            diff = (logits[:, _TISSUE] - logits[:, 1 - _TISSUE]).numpy()
            for (y, x0, oy, ox), d in zip(batch, diff):
                margin[y + oy : y + tile, x0 + ox : x0 + tile] = d[oy:, ox:]
    return margin[:height, :width]


class GrandQCDetector:
    """The ``grandqc`` tissue detector (see the module's documentation for each step).

    Attributes:
        weights: The checkpoint given (``None``: the official file through the Hugging Face
            cache).
        device: Where the network runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        jpeg_quality: Quality of the JPEG round trip before inference (``None``: none).
        weights_source: Where the loaded weights came from (a path or ``hf://`` address).
        weights_sha256: Hex sha256 of the loaded checkpoint file.
    """

    def __init__(
        self, weights: str | None = None, device: str = "cpu", jpeg_quality: int | None = 80
    ) -> None:
        self.weights = weights
        self.device = device
        self.jpeg_quality = jpeg_quality
        path, self.weights_source = _weights_file(weights)
        stat = path.stat()
        self.network = _load(
            str(path), (stat.st_mtime_ns, stat.st_size), self.weights_source, device
        )
        self.weights_sha256 = _sha256(str(path), stat.st_mtime_ns, stat.st_size)

    def __call__(self, thumbnail: np.ndarray, mpp: float | None = None) -> np.ndarray:
        """Tissue mask of ``thumbnail`` (uint8 (H, W, 3) at ``mpp`` µm/px); bool (H, W).

        Raises:
            ValueError: ``mpp`` is missing: the network runs at a fixed resolution.
        """
        if mpp is None or not (math.isfinite(mpp) and mpp > 0):
            raise ValueError(
                f"the {NAME!r} tissue detector needs the thumbnail's resolution: call it as "
                f"detector(thumbnail, mpp=<µm per pixel>), got mpp={mpp!r}"
            )
        thumbnail = np.asarray(thumbnail, dtype=np.uint8)
        image = resample(thumbnail, mpp)
        if self.jpeg_quality is not None:
            image = jpeg_round_trip(image, self.jpeg_quality)
        margin = _logit_margin(self.network, image, self.device)
        height, width = thumbnail.shape[:2]
        if margin.shape != (height, width):
            margin = np.asarray(
                Image.fromarray(margin, mode="F").resize((width, height), Image.Resampling.BILINEAR)
            )
        return margin >= 0

    def to_dict(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this detector (recorded in ``bags_config.json``)."""
        return {"weights": self.weights, "device": self.device, "jpeg_quality": self.jpeg_quality}

    def __repr__(self) -> str:
        return f"GrandQCDetector(weights={self.weights_source!r}, device={self.device!r})"


@functools.lru_cache(maxsize=8)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    """Digest of a checkpoint, computed once per file version."""
    return wt.sha256sum(path)


def build_grandqc(
    weights: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    jpeg_quality: int | None = JPEG_QUALITY,
) -> GrandQCDetector:
    """Factory of the ``grandqc`` tissue detector: GrandQC's network with its weights loaded.

    Args:
        weights: A local ``Tissue_Detection_MPP10.pth`` (or a folder holding it); ``None``
            fetches the official file through the Hugging Face cache.
        device: Torch device the network runs on. The default, the CPU, gives the same mask
            on every machine; a thumbnail at 10 µm/px of a 2 x 2 cm section is 16 tiles.
        jpeg_quality: Quality (1-100) of the JPEG round trip GrandQC was trained with;
            ``None`` skips it.

    Raises:
        ValueError: An argument is out of range.
        MissingDependencyError: segmentation_models_pytorch is not installed.
        WeightsError: The weights could not be found, downloaded or loaded.
    """
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be a path or None, got {weights!r}")
    if not isinstance(device, str):
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    try:
        torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is not a torch device ({exc})") from None
    if jpeg_quality is not None and (
        isinstance(jpeg_quality, bool)
        or not isinstance(jpeg_quality, int)
        or not 1 <= jpeg_quality <= 100
    ):
        raise ValueError(
            f"jpeg_quality must be an integer from 1 to 100 or None, got {jpeg_quality!r}"
        )
    _smp()  # a missing dependency is named before any download
    return GrandQCDetector(
        None if weights is None else os.fspath(weights), device=device, jpeg_quality=jpeg_quality
    )
