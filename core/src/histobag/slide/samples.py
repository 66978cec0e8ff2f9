"""Sample data: small synthetic whole-slide images that OpenSlide opens as Aperio slides.

The tissue texture is scikit-image's bundled immunohistochemistry image (512 x 512, no
download). It fills a few irregular blobs on a bright background, so tissue detection has both
tissue and glass to tell apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from histobag.errors import HistobagError
from histobag.files import atomic_path

__all__ = ["sample_slide"]

_TILE = 256  # TIFF tile side
#: sample_slide compression → tifffile's compression name and arguments.
_COMPRESSION = {"deflate": ("zlib", {"level": 6}), "jpeg": ("jpeg", {"level": 80})}
_BACKGROUND = 243  # bright gray glass, above the default whitespace threshold of 230


def _texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """IHC texture covering (height, width): the image mirrored into a seamless 1024 tile."""
    from skimage import data

    ihc = data.immunohistochemistry()
    block = np.concatenate(
        [
            np.concatenate([ihc, ihc[:, ::-1]], axis=1),
            np.concatenate([ihc[::-1], ihc[::-1, ::-1]], axis=1),
        ],
        axis=0,
    )
    oy, ox = rng.integers(0, block.shape[0]), rng.integers(0, block.shape[1])
    reps = (-(-(height + oy) // block.shape[0]), -(-(width + ox) // block.shape[1]), 1)
    return np.tile(block, reps)[oy : oy + height, ox : ox + width]


def _blob_mask(height: int, width: int, rng: np.random.Generator, n_blobs: int) -> np.ndarray:
    """Union of ``n_blobs`` irregular ellipses, computed on a 4x coarser grid and upsampled."""
    step = 4
    gh, gw = -(-height // step), -(-width // step)
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32) * step
    mask = np.zeros((gh, gw), dtype=bool)
    for _ in range(n_blobs):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        rx, ry = rng.uniform(0.1, 0.22) * width, rng.uniform(0.1, 0.22) * height
        angle = np.arctan2((yy - cy) / ry, (xx - cx) / rx)
        radius = np.hypot((xx - cx) / rx, (yy - cy) / ry)
        # A wobbly outline: a few low-frequency harmonics of the polar angle.
        wobble = 1.0
        for k in (2, 3, 5):
            wobble = wobble + rng.uniform(0.03, 0.1) * np.sin(k * angle + rng.uniform(0, 2 * np.pi))
        mask |= radius < wobble
    mask = np.repeat(np.repeat(mask, step, axis=0), step, axis=1)
    return mask[:height, :width]


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by an integer factor (the remainder at the edges is cropped)."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, 3)
    return blocks.mean(axis=(1, 3), dtype=np.float32).round().astype(np.uint8)


def sample_slide(
    path: str | Path,
    size: tuple[int, int] = (4096, 3072),
    seed: int = 0,
    mpp: float = 0.5,
    levels: int = 3,
    compression: Literal["deflate", "jpeg"] = "deflate",
) -> Path:
    """Write a synthetic pyramidal slide that OpenSlide opens as an Aperio SVS.

    Level ``i`` is downsampled by ``4 ** i`` (1, 4, 16 for three levels); tiles are 256 x 256,
    deflate-compressed (lossless) or, like most scanners' files, JPEG-compressed. The
    ImageDescription is Aperio's (``Aperio Image Library ... |MPP = 0.5|AppMag = 20``), so
    ``openslide.mpp-x`` and ``openslide.objective-power`` are set. The same arguments always
    give the same bytes.

    Args:
        path: Output file; ``.svs`` is the natural suffix. Written atomically.
        size: Level-0 (width, height) in pixels.
        seed: Seed for the placement and shape of the tissue blobs.
        mpp: Level-0 microns per pixel recorded in the file (AppMag is ``10 / mpp``).
        levels: Number of pyramid levels.
        compression: ``"deflate"`` or ``"jpeg"`` (quality 80, YCbCr 4:2:0).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> from histobag.slide.samples import sample_slide
        >>> from histobag.slide import WSI
        >>> wsi = WSI(sample_slide("sample.svs"), tile_px=256, tile_um="20x")  # doctest: +SKIP
    """
    import tifffile

    width, height = (int(v) for v in size)
    if levels < 1 or width < 1 or height < 1 or not mpp > 0:
        raise HistobagError(
            f"sample_slide needs a positive size, mpp and levels, got size={size}, "
            f"mpp={mpp}, levels={levels}."
        )
    if compression not in _COMPRESSION:
        raise HistobagError(
            f"sample_slide compression must be one of {sorted(_COMPRESSION)}, got {compression!r}."
        )
    if min(width, height) // 4 ** (levels - 1) < 1:
        raise HistobagError(
            f"A {width}x{height} slide is too small for {levels} levels (each level is 4x "
            "smaller); use a larger size or fewer levels."
        )
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), _BACKGROUND, dtype=np.uint8)
    mask = _blob_mask(height, width, rng, n_blobs=4)
    image[mask] = _texture(height, width, rng)[mask]

    pyramid = [image]
    for _ in range(1, levels):
        pyramid.append(_downsample(pyramid[-1], 4))

    magnification = 10 / mpp
    description = (
        f"Aperio Image Library v12.0.15 (histobag sample)\r\n{width}x{height} [0,0 "
        f"{width}x{height}] ({_TILE}x{_TILE}) -> {width}x{height} "
        f"|AppMag = {magnification:g}|MPP = {mpp:g}|Filename = sample|Title = histobag sample"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=False) as tif:
        for i, level in enumerate(pyramid):
            tif.write(
                level,
                photometric="rgb",
                tile=(_TILE, _TILE),
                compression=_COMPRESSION[compression][0],
                compressionargs=_COMPRESSION[compression][1],
                description=description,
                metadata=None,
                software="histobag",
                subfiletype=0 if i == 0 else 1,
            )
    return path
