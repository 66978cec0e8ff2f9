"""The ``hsv`` tissue detector: colour and density thresholds, pen rejection, clean-up.

Otsu on saturation (:func:`histobag.slide.tissue.otsu_tissue_mask`) splits a slide's pixels
into its two most distinct saturation groups. On a slide with strongly stained tissue that split
falls between strong and pale tissue, so pale or haematoxylin-only tissue is lost, and pen ink,
the most saturated thing on a slide, is kept. This detector uses fixed thresholds instead:

1. White balance: divide the thumbnail by the glass colour (:func:`glass_colour`, from the
   brightest unsaturated pixels), so glass is neutral white whatever the scanner's tint.
2. Ink (:func:`pen_mask`): very dark pixels (black marker, opaque debris) and saturated hues
   that H&E and IHC stains never have (``pen_hues``: green, blue and red markers).
3. Tissue: saturation of at least ``saturation_min`` (pale and blue tissue is faintly
   coloured; glass, dust and bubbles are grey), or, for grey-blue stroma, darker than the
   glass by ``density_min`` and textured, in areas wider than a bubble's rim; never ink.
   Each per-pixel cue is median filtered over ``smooth_um``.
4. Clean-up in physical units (``mpp``): an opening and a closing, pieces smaller than
   ``min_tissue_um2`` dropped (dust), holes smaller than ``max_hole_um2`` filled, and ink cut
   out with a ``pen_margin_um`` margin. On a small image (a crop, a TMA core) those areas are
   capped at a fraction of the image (``min_tissue_fraction``, ``max_hole_fraction``), so a
   slide smaller than a dust threshold keeps its tissue.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["HSVParams", "HSVTissueDetector", "build_hsv", "glass_colour", "pen_mask"]

#: (hue from, hue to, smallest saturation) of the marker colours: hue in [0, 1) as in HSV;
#: ``from > to`` wraps through red. H&E is purple to pink (hue ~0.7-0.95), IHC's DAB brown
#: (~0.05-0.12): none is green, saturated blue or pure red.
DEFAULT_PEN_HUES: tuple[tuple[float, float, float], ...] = (
    (0.18, 0.52, 0.15),  # green (and cyan): never a stain's colour
    (0.52, 0.70, 0.45),  # blue: haematoxylin is blue too, but faint
    (0.96, 0.03, 0.70),  # red: eosin and blood are pinker and less saturated
)


@dataclass(frozen=True)
class HSVParams:
    """Parameters of the ``hsv`` tissue detector (JSON-able; recorded in the bags config).

    Sizes are in µm and areas in µm², so one set of parameters fits thumbnails of any
    resolution. Morphology uses squares of the area of discs of the radii given here.

    Attributes:
        work_mpp: Finer thumbnails are averaged down (by a whole factor) to about this many
            µm per pixel first, and the mask brought back: at a few µm per pixel, pale tissue
            is resolved into cells and bright gaps, which no per-pixel colour rule calls
            tissue; averaged, it is faintly coloured. 0 works at the thumbnail's resolution.
        smooth_um: Radius (µm) of the median filter applied to each per-pixel cue (a square
            of ``2 * round(smooth_um / mpp) + 1`` pixels): it removes noise and, unlike a
            blur, leaves outlines where they are. Also the window of the texture measure.
        saturation_min: Smallest HSV saturation (after white balance, 0-1) of tissue.
        density_min: Pixels this much darker than the glass (optical density relative to the
            glass, summed over R, G and B) are tissue too if textured: grey-blue
            counterstained stroma has little colour.
        texture_min: Smallest local standard deviation of the white-balanced brightness (0-1,
            over the ``smooth_um`` window) of such grey tissue; glass, smudges and
            out-of-focus dirt are smooth.
        grey_open_um: Radius (µm) of the opening grey tissue (with the coloured tissue next to
            it) must survive: bubble rims, coverslip edges and scratches are thin.
        dark_max: Brightness (HSV value after white balance, 0-1) at or below which a pixel
            is black ink or opaque debris, not tissue.
        pen_hues: ``(hue_from, hue_to, saturation_min)`` triples: pixels with a hue in the
            range (wrapping through 1.0 when ``hue_from > hue_to``) and at least that
            saturation are marker ink.
        pen_margin_um: Margin (µm) cut out around ink, where its edge blends with the glass.
        open_um: Radius (µm) of the opening that removes thin lines and specks.
        close_um: Radius (µm) of the closing that joins tissue fragments.
        min_tissue_um2: Pieces of tissue smaller than this area (µm²) are dropped (dust).
        max_hole_um2: Holes in tissue smaller than this area (µm²) are filled.
        min_tissue_fraction: Cap on ``min_tissue_um2`` as a fraction of the image's area:
            on an image of under 5 mm² (defaults) dust is what is small for that image.
        max_hole_fraction: Cap on ``max_hole_um2`` as a fraction of the image's area.
    """

    work_mpp: float = 8.0
    smooth_um: float = 16.0
    saturation_min: float = 0.025
    density_min: float = 0.15
    texture_min: float = 0.01
    grey_open_um: float = 48.0
    dark_max: float = 0.25
    pen_hues: tuple[tuple[float, float, float], ...] = DEFAULT_PEN_HUES
    pen_margin_um: float = 24.0
    open_um: float = 12.0
    close_um: float = 48.0
    min_tissue_um2: float = 50_000.0
    max_hole_um2: float = 100_000.0
    min_tissue_fraction: float = 0.01
    max_hole_fraction: float = 0.02

    def __post_init__(self) -> None:
        try:
            hues = tuple(tuple(float(v) for v in triple) for triple in self.pen_hues)
        except (TypeError, ValueError):
            hues = ((),)
        if any(len(t) != 3 for t in hues):
            raise ValueError(
                f"pen_hues needs (hue_from, hue_to, saturation_min) triples, got {self.pen_hues!r}"
            )
        object.__setattr__(self, "pen_hues", hues)
        for field in dataclasses.fields(self):
            if field.name == "pen_hues":
                continue
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{field.name} must be a number >= 0, got {value!r}")
            object.__setattr__(self, field.name, float(value))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples as lists), as recorded in ``bags_config.json``."""
        out = dataclasses.asdict(self)
        out["pen_hues"] = [list(t) for t in self.pen_hues]
        return out


def _saturation_value(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value of channel-first float RGB planes (3, ...) in (0, 1]."""
    value = np.maximum(np.maximum(planes[0], planes[1]), planes[2])
    delta = value - np.minimum(np.minimum(planes[0], planes[1]), planes[2])
    return delta / value, value


def _hue(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """HSV hue in [0, 1) of float RGB values (as ``skimage.color.rgb2hsv``; 0 for greys)."""
    value = np.maximum(np.maximum(r, g), b)
    delta = value - np.minimum(np.minimum(r, g), b)
    safe = np.where(delta > 0, delta, 1)
    hue = np.where(value == g, 2 + (b - r) / safe, 4 + (r - g) / safe)
    hue = np.where(value == r, (g - b) / safe, hue)
    return np.where(delta > 0, (hue / 6) % 1, 0)


def glass_colour(rgb: np.ndarray) -> np.ndarray:
    """Estimated colour (float32 RGB, 0-1) of the bare glass in a uint8 RGB image (H, W, 3).

    The glass is the brightest unsaturated part of a slide: the median of the pixels with
    saturation under 0.1 and brightness at least 0.6 that are in the brightest quarter of
    those (on a subsample of about 250,000 pixels). With too few such pixels (tissue or ink
    everywhere) the glass is taken as white.
    """
    step = max(1, int(math.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))
    pixels = np.asarray(rgb[::step, ::step], dtype=np.float32).reshape(-1, 3) / 255.0
    pixels = pixels[pixels.max(axis=1) > 0]  # black pixels have no colour to speak of
    sat, value = _saturation_value(pixels.T)
    candidates = (sat < 0.1) & (value >= 0.6)
    if candidates.sum() < max(16, candidates.size // 1000):
        return np.ones(3, dtype=np.float32)
    brightest = candidates & (value >= np.percentile(value[candidates], 75))
    return np.median(pixels[brightest], axis=0).astype(np.float32)


def _majority(mask: np.ndarray, size: int) -> np.ndarray:
    """Median filter of a bool mask over a ``size`` square (``size`` odd): a majority vote.

    Thresholding commutes with the median, so this equals thresholding a median-filtered
    image, at the cost of a box filter.
    """
    if size <= 1:
        return mask
    return ndimage.uniform_filter(mask.astype(np.float32), size=size, mode="nearest") > 0.5


def _texture(grey: np.ndarray, size: int) -> np.ndarray:
    """Local standard deviation of ``grey`` over a ``size`` square."""
    mean = ndimage.uniform_filter(grey, size, mode="nearest")
    square = ndimage.uniform_filter(grey * grey, size, mode="nearest")
    return np.sqrt(np.maximum(square - mean * mean, 0.0))


def _square(radius_px: float) -> int:
    """Side of the square with the area of a disc of ``radius_px`` (odd; 1 means none)."""
    return 2 * round(radius_px * math.sqrt(math.pi) / 2) + 1


def _dilate(mask: np.ndarray, side: int) -> np.ndarray:
    """Dilation by a ``side`` square: two running maxima, whatever the size."""
    if side <= 1:
        return mask
    return ndimage.maximum_filter(mask.view(np.uint8), size=side, mode="nearest").view(bool)


def _erode(mask: np.ndarray, side: int) -> np.ndarray:
    """Erosion by a ``side`` square; the image edge is extended, so it does not erode."""
    if side <= 1:
        return mask
    return ndimage.minimum_filter(mask.view(np.uint8), size=side, mode="nearest").view(bool)


def _open_close(mask: np.ndarray, open_px: float, close_px: float) -> np.ndarray:
    """Opening then closing with squares of the area of discs of these radii (pixels).

    Squares rather than discs: morphology by a square is separable into running minima and
    maxima, so its cost does not grow with the radius.
    """
    opening, closing = _square(open_px), _square(close_px)
    mask = _dilate(_erode(mask, opening), opening)
    return _erode(_dilate(mask, closing), closing)


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_px`` pixels."""
    if min_px <= 1:
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return mask
    keep = np.bincount(labels.ravel()) >= min_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """``mask`` with its holes (background enclosed by it) under ``max_px`` pixels filled."""
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    if n == 0:
        return mask
    small = np.bincount(labels.ravel()) < max_px
    small[0] = False
    return mask | small[labels]


def _block_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    """``rgb`` (uint8 (H, W, 3)) averaged over ``factor`` x ``factor`` blocks (uint8).

    The last row and column of blocks, when partial, average what is there (edge pixels
    repeated), so the image's edges stay as they are.
    """
    height, width = rgb.shape[:2]
    pad_h, pad_w = -height % factor, -width % factor
    padded = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    blocks = padded.reshape(
        padded.shape[0] // factor, factor, padded.shape[1] // factor, factor, 3
    ).astype(np.float32)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def pen_mask(
    planes: np.ndarray, sat: np.ndarray, value: np.ndarray, params: HSVParams
) -> np.ndarray:
    """Marker ink and opaque debris in white-balanced channel-first RGB planes (3, H, W).

    A pixel is ink when its brightness (``value``) is at most ``dark_max`` or its hue lies in
    one of ``pen_hues`` with at least that range's saturation (``sat``).
    """
    ink = value <= params.dark_max
    if not params.pen_hues:
        return ink
    # Hue only matters where a pen range's saturation is reached: a small part of a slide.
    where = np.nonzero(sat >= min(t[2] for t in params.pen_hues))
    hue = _hue(*(plane[where] for plane in planes))
    sat_where = sat[where]
    inked = np.zeros(hue.shape, dtype=bool)
    for start, stop, smallest in params.pen_hues:
        in_range = (hue >= start) & (hue < stop) if start <= stop else (hue >= start) | (hue < stop)
        inked |= in_range & (sat_where >= smallest)
    ink[where] |= inked
    return ink


class HSVTissueDetector:
    """Callable ``detector(thumbnail, mpp=...)`` returning the ``hsv`` tissue mask.

    Args:
        params: The detector's parameters.
    """

    def __init__(self, params: HSVParams | None = None) -> None:
        self.params = params or HSVParams()

    def __repr__(self) -> str:
        return f"HSVTissueDetector({self.params})"

    def to_dict(self) -> dict[str, Any]:
        """Keyword arguments of :func:`build_hsv` that rebuild this detector (JSON-able)."""
        return self.params.to_dict()

    def __call__(self, thumbnail: np.ndarray, mpp: float) -> np.ndarray:
        """Tissue mask of an RGB thumbnail.

        Args:
            thumbnail: uint8 (H, W, 3).
            mpp: µm per thumbnail pixel (physical sizes in the parameters use it).

        Returns:
            Bool (H, W), True on tissue.
        """
        if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
            raise ValueError(f"the hsv tissue detector needs mpp > 0, got {mpp!r}")
        rgb = np.asarray(thumbnail)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"the hsv tissue detector needs RGB (H, W, 3), got {rgb.shape}")
        factor = int(self.params.work_mpp // mpp) if self.params.work_mpp > 0 else 1
        if factor <= 1:
            return self._detect(rgb, mpp)
        mask = self._detect(_block_mean(rgb, factor), mpp * factor)
        mask = np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)
        return mask[: rgb.shape[0], : rgb.shape[1]]

    def _detect(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        """The mask of ``rgb`` (uint8 (H, W, 3)) at its own resolution ``mpp``."""
        p = self.params
        glass = np.maximum(glass_colour(rgb), np.float32(1e-3))
        # White balance on the glass, channel first (contiguous planes are faster).
        planes = np.moveaxis(rgb, -1, 0).astype(np.float32)
        planes /= (glass * 255.0)[:, None, None]
        np.clip(planes, np.float32(1e-3), np.float32(1.0), out=planes)
        # Each cue is a per-pixel threshold, then a median filter (a majority vote): that
        # removes noise and, unlike blurring first, leaves outlines where they are.
        size = 2 * max(1, round(p.smooth_um / mpp)) + 1
        sat, value = _saturation_value(planes)
        ink = _majority(pen_mask(planes, sat, value, p), size)
        coloured = _majority(sat >= p.saturation_min, size)
        del sat, value
        # Optical density summed over channels >= d  <=>  product of transmittances <= e^-d.
        dense = planes[0] * planes[1] * planes[2] <= np.float32(math.exp(-p.density_min))
        grey = _majority(dense, size) & ~ink
        if grey.any():
            grey &= _texture(planes.mean(axis=0), size) >= p.texture_min
            # Grey lines and rings (bubble rims, coverslip edges) are thin; tissue is not.
            grey &= _open_close(grey | coloured, p.grey_open_um / mpp, 0.0)
        tissue = (coloured | grey) & ~ink
        tissue = _open_close(tissue, p.open_um / mpp, p.close_um / mpp)
        # Areas in pixels; on a small image capped at a fraction of it (see HSVParams).
        pixels = tissue.size
        min_tissue_px = min(p.min_tissue_um2 / (mpp * mpp), p.min_tissue_fraction * pixels)
        max_hole_px = min(p.max_hole_um2 / (mpp * mpp), p.max_hole_fraction * pixels)
        tissue = _drop_small(tissue, min_tissue_px)
        tissue = _fill_small_holes(tissue, max_hole_px)
        if ink.any():
            tissue &= ~_dilate(ink, _square(p.pen_margin_um / mpp))
            # Ink cut tissue into pieces; slivers left between strokes are dropped like dust.
            tissue = _drop_small(tissue, min_tissue_px)
        return tissue


def build_hsv(**params: Any) -> HSVTissueDetector:
    """Factory of the ``hsv`` tissue detector (see :class:`HSVParams` for ``params``).

    Example:
        >>> detector = build_hsv(saturation_min=0.05)
        >>> detector.params.saturation_min
        0.05
    """
    try:
        return HSVTissueDetector(HSVParams(**params))
    except TypeError as error:
        known = ", ".join(f.name for f in dataclasses.fields(HSVParams))
        raise TypeError(f"hsv tissue detector: {error}; its parameters are {known}") from None
