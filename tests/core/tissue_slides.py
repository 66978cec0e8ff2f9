"""Generated slide thumbnails with known tissue masks, for the tissue detector tests.

Each :class:`Case` is an RGB thumbnail at :data:`MPP` µm/px (the scale ``WSI`` computes tissue
masks at is 8-16 µm/px) and the mask a detector should return. Tissue is real histology:
scikit-image's immunohistochemistry image, unmixed into haematoxylin and DAB with
``skimage.color.rgb2hed`` and re-rendered with the DAB amount as eosin, so it looks like H&E.
Pale tissue and haematoxylin-only tissue are the same texture with less stain, or no eosin.
Everything is laid on noisy, slightly tinted glass by Beer-Lambert (multiplying transmittances),
as a scanner sees it; pen ink is multiplied the same way, over glass and over tissue.

The known mask is the tissue outline minus what pen ink covers; dust, bubbles, coverslip edges
and smudges on the glass are not tissue.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["MPP", "SHAPE", "Case", "cases", "iou", "stained_texture"]

#: µm per thumbnail pixel of every generated case.
MPP = 16.0
#: (height, width) of every generated thumbnail: 4.6 x 6.1 mm of slide.
SHAPE = (288, 384)
#: Reduction of the texture from the image's own scale; its structures stay visible.
_TEXTURE_DOWNSAMPLE = 4
_GLASS = np.array([236.0, 238.0, 242.0])  # a slightly blue glass, as many scanners give
_NOISE = 2.5  # camera noise, grey levels (standard deviation)
#: Optical density per unit of haematoxylin and eosin (Macenko's reference H&E vectors; the
#: third row is their cross product, unused): pinker eosin than scikit-image's.
_RGB_FROM_HE = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581], [0.0, 0.0, 0.0]])
_RGB_FROM_HE[2] = np.cross(_RGB_FROM_HE[0], _RGB_FROM_HE[1])
_RGB_FROM_HE[2] /= np.linalg.norm(_RGB_FROM_HE[2])

#: Marker ink transmittances (RGB, 0-255): what a stroke looks like on white.
INKS = {
    "green": (45, 140, 80),
    "blue": (40, 70, 175),
    "black": (35, 35, 45),
    "red": (200, 35, 45),
}


@dataclass(frozen=True)
class Case:
    """A generated thumbnail and the tissue it shows.

    Attributes:
        name: What the case tests, e.g. ``"pale"``.
        thumbnail: uint8 (H, W, 3).
        mask: Bool (H, W), True on tissue a detector should keep.
        ink: Bool (H, W), True where pen ink covers at least half a pixel.
        debris: Bool (H, W), True where dust, a bubble's rim, a coverslip edge or a smudge
            darkens the glass by at least 5%.
        mpp: µm per thumbnail pixel.
    """

    name: str
    thumbnail: np.ndarray
    mask: np.ndarray
    ink: np.ndarray
    debris: np.ndarray
    mpp: float = MPP


def iou(predicted: np.ndarray, known: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(predicted, known).sum()
    return float(np.logical_and(predicted, known).sum() / union) if union else 1.0


@functools.lru_cache(maxsize=8)
def stained_texture(haematoxylin: float = 1.0, eosin: float = 0.7) -> np.ndarray:
    """H&E-looking uint8 texture (256, 256, 3) from the IHC image, seamless when tiled.

    Args:
        haematoxylin: Scale of the haematoxylin concentration (nuclei, blue-purple).
        eosin: Scale of the eosin concentration, taken from the IHC image's DAB (pink).
    """
    from skimage import color, data

    hed = color.rgb2hed(data.immunohistochemistry())
    stains = np.zeros_like(hed)
    stains[..., 0] = hed[..., 0] * haematoxylin
    stains[..., 1] = hed[..., 2] * eosin  # DAB's amount, rendered in eosin's colour
    rgb = color.combine_stains(stains, _RGB_FROM_HE) * 255.0
    block = np.concatenate(
        [np.concatenate([rgb, rgb[:, ::-1]], 1), np.concatenate([rgb[::-1], rgb[::-1, ::-1]], 1)]
    )
    f = _TEXTURE_DOWNSAMPLE
    h, w = block.shape[0] // f, block.shape[1] // f
    small = block.reshape(h, f, w, f, 3).mean(axis=(1, 3))
    return np.clip(small.round(), 0, 255).astype(np.uint8)


def _tiled(texture: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``texture`` tiled over ``shape`` from a random offset, as float transmittance in [0, 1]."""
    th, tw = texture.shape[:2]
    oy, ox = rng.integers(0, th), rng.integers(0, tw)
    reps = (-(-(shape[0] + oy) // th), -(-(shape[1] + ox) // tw), 1)
    return np.tile(texture, reps)[oy : oy + shape[0], ox : ox + shape[1]] / 255.0


def _blob(
    shape: tuple[int, int],
    centre: tuple[float, float],
    radii: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """An irregular ellipse: centre (y, x) and radii (ry, rx) in pixels, wobbly outline."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    dy, dx = (yy - centre[0]) / radii[0], (xx - centre[1]) / radii[1]
    angle = np.arctan2(dy, dx)
    outline = 1.0
    for k in (2, 3, 5, 7):
        outline = outline + rng.uniform(0.03, 0.09) * np.sin(k * angle + rng.uniform(0, 2 * np.pi))
    return np.hypot(dy, dx) < outline


def _stroke(
    shape: tuple[int, int],
    start: tuple[float, float],
    end: tuple[float, float],
    width: float,
    wave: float = 6.0,
) -> np.ndarray:
    """Coverage in [0, 1] of a wavy pen stroke from ``start`` to ``end`` (y, x), anti-aliased."""
    t = np.linspace(0.0, 1.0, 4 * int(np.hypot(end[0] - start[0], end[1] - start[1]) + 2))
    y = start[0] + t * (end[0] - start[0])
    x = start[1] + t * (end[1] - start[1])
    length = np.hypot(end[0] - start[0], end[1] - start[1]) or 1.0
    normal = (-(end[1] - start[1]) / length, (end[0] - start[0]) / length)
    offset = wave * np.sin(2 * np.pi * 1.5 * t)
    y, x = y + offset * normal[0], x + offset * normal[1]
    centre = np.zeros(shape, dtype=bool)
    inside = (y >= 0) & (y < shape[0] - 0.5) & (x >= 0) & (x < shape[1] - 0.5)
    centre[np.round(y[inside]).astype(int), np.round(x[inside]).astype(int)] = True
    distance = ndimage.distance_transform_edt(~centre)
    return np.clip(width / 2 - distance + 0.5, 0.0, 1.0)


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Anti-aliased coverage of a disc (y, x, radius in pixels)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    distance = np.hypot(yy - centre[0], xx - centre[1])
    return np.clip(radius - distance + 0.5, 0.0, 1.0)


class _Slide:
    """A thumbnail being composed: glass, then tissue, inks and debris, then camera noise."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int] = SHAPE) -> None:
        self.rng, self.shape = rng, shape
        # Transmittance of everything on the glass; the light is the glass colour with a
        # gentle illumination gradient, as flat-field correction leaves it.
        self.transmit = np.ones((*shape, 3))
        ramp = np.linspace(-1.0, 1.0, shape[1])[None, :, None]
        self.light = (_GLASS + 3.0 * ramp) / 255.0
        self.tissue = np.zeros(shape, dtype=bool)
        self.ink = np.zeros(shape, dtype=bool)
        self.debris = np.zeros(shape, dtype=bool)

    def add_tissue(
        self,
        centre: tuple[float, float],
        radii: tuple[float, float],
        haematoxylin: float = 1.0,
        eosin: float = 0.7,
    ) -> None:
        """Lay a piece of tissue, centre and radii as fractions of the height and width."""
        h, w = self.shape
        blob = _blob(
            self.shape, (centre[0] * h, centre[1] * w), (radii[0] * h, radii[1] * w), self.rng
        )
        texture = _tiled(stained_texture(haematoxylin, eosin), self.shape, self.rng)
        self.transmit[blob] *= texture[blob]
        self.tissue |= blob

    def add_ink(self, coverage: np.ndarray, rgb: tuple[int, int, int]) -> None:
        """Multiply ``rgb`` ink over whatever is there where ``coverage`` (0-1) says."""
        ink = np.asarray(rgb, dtype=np.float64) / 255.0
        self.transmit *= 1.0 - coverage[..., None] * (1.0 - ink)
        self.ink |= coverage > 0.5

    def add_debris(self, coverage: np.ndarray, grey: float) -> None:
        """Something grey on the glass (dust, a bubble's rim, a coverslip edge, a smudge)."""
        self.transmit *= 1.0 - coverage[..., None] * (1.0 - grey)
        self.debris |= coverage * (1.0 - grey) >= 0.05

    def stroke(self, colour: str, start: tuple[float, float], end: tuple[float, float]) -> None:
        """A marker stroke 300 µm wide between two points (fractions of height and width)."""
        h, w = self.shape
        width = 300.0 / MPP
        a, b = (start[0] * h, start[1] * w), (end[0] * h, end[1] * w)
        self.add_ink(_stroke(self.shape, a, b, width), INKS[colour])

    def dust(self, n: int) -> None:
        """``n`` dark specks 60-140 µm across, on the glass away from tissue."""
        placed = 0
        while placed < n:
            y, x = self.rng.uniform(8, self.shape[0] - 8), self.rng.uniform(8, self.shape[1] - 8)
            radius = self.rng.uniform(30.0, 70.0) / MPP
            speck = _disc(self.shape, (y, x), radius)
            if (speck > 0)[self.tissue | self.ink].any():
                continue
            self.add_debris(speck, self.rng.uniform(0.25, 0.55))
            placed += 1

    def glass_artefacts(self) -> None:
        """An air bubble's rim, a coverslip edge and a faint grey smudge."""
        h, w = self.shape
        ring = _disc(self.shape, (0.22 * h, 0.8 * w), 0.12 * h) - _disc(
            self.shape, (0.22 * h, 0.8 * w), 0.12 * h - 2.0
        )
        self.add_debris(ring, 0.6)
        edge = _stroke(self.shape, (0.93 * h, 0.0), (0.97 * h, w - 1.0), 2.5, wave=0.0)
        self.add_debris(edge, 0.55)
        smudge = ndimage.gaussian_filter(
            _blob(self.shape, (0.75 * h, 0.82 * w), (0.1 * h, 0.12 * w), self.rng).astype(float),
            3.0,
        )
        self.add_debris(smudge, 0.93)

    def case(self, name: str) -> Case:
        """The finished thumbnail (with camera noise) and its known mask."""
        rgb = 255.0 * self.light * self.transmit
        rgb += self.rng.normal(0.0, _NOISE, rgb.shape)
        thumbnail = np.clip(rgb.round(), 0, 255).astype(np.uint8)
        return Case(name, thumbnail, self.tissue & ~self.ink, self.ink, self.debris)


def cases(seed: int = 0) -> list[Case]:
    """The generated cases, the same for the same seed.

    ``normal`` (H&E), ``pale`` (one H&E piece, two faintly stained), ``haematoxylin`` (one H&E
    piece, two with no eosin), ``pen`` (green, blue and black strokes on glass and across
    tissue), ``dust`` (specks on the glass), ``glass`` (bubble rim, coverslip edge, smudge, next
    to H&E and pale tissue) and ``everything`` (all of it on one slide, red ink too).
    """
    rng = np.random.default_rng(seed)
    out = []

    slide = _Slide(rng)
    slide.add_tissue((0.3, 0.25), (0.2, 0.16))
    slide.add_tissue((0.65, 0.62), (0.25, 0.2))
    slide.add_tissue((0.25, 0.78), (0.15, 0.12))
    out.append(slide.case("normal"))

    slide = _Slide(rng)
    slide.add_tissue((0.32, 0.25), (0.22, 0.17))
    slide.add_tissue((0.68, 0.6), (0.22, 0.2), haematoxylin=0.25, eosin=0.2)
    slide.add_tissue((0.26, 0.8), (0.17, 0.13), haematoxylin=0.3, eosin=0.15)
    out.append(slide.case("pale"))

    slide = _Slide(rng)
    slide.add_tissue((0.32, 0.25), (0.22, 0.17))
    slide.add_tissue((0.68, 0.6), (0.22, 0.2), haematoxylin=1.2, eosin=0.0)
    slide.add_tissue((0.26, 0.8), (0.17, 0.13), haematoxylin=0.8, eosin=0.0)
    out.append(slide.case("haematoxylin"))

    slide = _Slide(rng)
    slide.add_tissue((0.35, 0.3), (0.25, 0.2))
    slide.add_tissue((0.65, 0.72), (0.22, 0.16))
    slide.stroke("green", (0.08, 0.05), (0.12, 0.6))
    slide.stroke("blue", (0.1, 0.22), (0.9, 0.4))
    slide.stroke("black", (0.9, 0.05), (0.35, 0.95))
    out.append(slide.case("pen"))

    slide = _Slide(rng)
    slide.add_tissue((0.35, 0.3), (0.25, 0.2))
    slide.add_tissue((0.65, 0.72), (0.22, 0.16))
    slide.dust(8)
    out.append(slide.case("dust"))

    slide = _Slide(rng)
    slide.add_tissue((0.4, 0.3), (0.28, 0.22))
    slide.add_tissue((0.45, 0.62), (0.18, 0.1), haematoxylin=0.3, eosin=0.2)
    slide.glass_artefacts()
    out.append(slide.case("glass"))

    slide = _Slide(rng)
    slide.add_tissue((0.3, 0.2), (0.2, 0.14))
    slide.add_tissue((0.7, 0.25), (0.18, 0.14), haematoxylin=0.3, eosin=0.2)
    slide.add_tissue((0.55, 0.6), (0.2, 0.13), haematoxylin=1.0, eosin=0.0)
    slide.stroke("green", (0.06, 0.3), (0.08, 0.7))
    slide.stroke("blue", (0.35, 0.45), (0.85, 0.7))
    slide.stroke("black", (0.95, 0.1), (0.6, 0.5))
    slide.stroke("red", (0.15, 0.88), (0.9, 0.92))
    slide.glass_artefacts()
    slide.dust(5)
    out.append(slide.case("everything"))
    return out
