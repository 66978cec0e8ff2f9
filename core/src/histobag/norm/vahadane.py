"""Vahadane stain normalisation, equal to slideflow 3.0.2's ``vahadane_sklearn`` (no SPAMS).

slideflow's ``vahadane_sklearn`` (``VahadaneSklearnNormalizer``, OpenCV/numpy backend) works on
one image at a time:

1. *Brightness standardisation*: ``I = uint8(clip(I * 255 / p90, 0, 255))`` (truncating), where
   ``p90`` is the 90th percentile of all of the image's values.
2. *Masks* from OpenCV's 8-bit CIE L* (``cv2.cvtColor(I, COLOR_RGB2LAB)``, L* scaled to 0-255):
   tissue for the stain estimate is ``L / 255 < 0.8``; pixels that are normalised at all are
   ``L / 255 < 0.93`` (the others keep their standardised value).
3. *Optical density* ``OD = -log(I / 255)`` in float32, black (0) values first set to 1.
4. *Stain matrix*: scikit-learn's ``DictionaryLearning(n_components=2, alpha=0.1,
   fit_algorithm="lars", transform_algorithm="lasso_lars", positive_dict=True,
   max_iter=1000)`` is fitted to the tissue ODs **transposed** (3 samples, the RGB channels,
   with one feature per pixel) and its ``fit_transform`` result, the 3 x 2 sparse code of the
   channels, transposed to 2 x 3, is the stain matrix: L1-sparse stains (hence the exact zeros
   of the presets) and non-negative per-pixel "dictionary atoms" as concentrations. Rows are
   swapped if the first row's red entry is the smaller, then scaled to unit length.
5. *Concentrations* of every pixel: unconstrained least squares of the OD on the image's own
   stain matrix (``numpy.linalg.lstsq``).
6. *Recomposition*: ``uint8(255 * exp(-C @ stain_matrix_target))``, a truncating cast without
   clipping: the few values above 255 (negative concentrations) wrap around modulo 256, as
   numpy's cast does on common platforms.

:class:`Vahadane` reproduces each step: the L* channel with OpenCV's fixed-point tables (equal
to ``cv2.cvtColor`` for all 2^24 colours), the OD with a lookup table equal to slideflow's
float32 values, and the dictionary learning and least squares with the same scikit-learn and
numpy calls on the same arrays. The computation runs on the CPU in numpy (as slideflow's);
results are returned on the input's device and in its layout. Each image is processed on its
own, so a batch gives exactly the results of its images one by one.

Agreement with slideflow (tests/core/test_norm_slideflow_vahadane.py, the reference images of
tests/fixtures/slideflow-norm): every value within 1 level for the presets ``v1`` and ``v2``
and for the fit to the reference target, and the fitted stain matrix within 2e-5 of slideflow's.
Dictionary learning is iterative, so other scikit-learn versions may move a few values by a
level or two.

Differences from slideflow, all outside its normal operation:

* slideflow's normalizer starts with the ``v2`` fit and has no ``v3`` preset (``fit("v3")``
  fails there, trying to read a file named ``v3``); here ``default_preset`` is ``"v2"``.
* Images with fewer tissue pixels (``L / 255 < 0.8``) than ``min_tissue`` of their pixels are
  returned unchanged (slideflow's dictionary learning fails on an image without tissue).
* The dictionary learning's random state (only used by scikit-learn to re-seed a stain that no
  pixel uses) is fixed, so results are deterministic.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch

from histobag.errors import HistobagError
from histobag.norm.base import StainNormalizer
from histobag.norm.ops import min_pixels


# ------------------------------------------------------------------------ OpenCV's L* (8-bit)
@lru_cache(maxsize=1)
def _opencv_l_tables() -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's integer tables for 8-bit RGB -> L*: sRGB linearisation and cube root."""
    # Linearised sRGB, scaled by 255 * 2^3 and rounded (OpenCV's gamma_shift = 3).
    x = np.arange(256, dtype=np.float64) / 255.0
    lin = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    gamma = np.rint(255.0 * 8.0 * lin).astype(np.int64)
    # f(t) of CIE L*a*b* on t = i / (255 * 2^3), scaled by 2^15 and rounded.
    t = np.arange(256 * 3 // 2 * 8, dtype=np.float64) / (255.0 * 8.0)
    f = np.where(t < 0.008856, t * 7.787 + 16.0 / 116.0, np.cbrt(t))
    cbrt = np.rint(32768.0 * f).astype(np.int64)
    return gamma, cbrt


def opencv_lightness(rgb: np.ndarray) -> np.ndarray:
    """L* channel of ``cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)`` for uint8 RGB, without OpenCV.

    OpenCV's 8-bit conversion works in fixed point: linearised channels from a table, the Y
    row of the sRGB-to-XYZ matrix in 12-bit integers, a cube-root table, and
    ``L = round((116 * 255 / 100) * f(Y) - 16 * 255 / 100)`` scaled to 0-255.

    Args:
        rgb: uint8 array with the three channels along the first axis, ``(3, ...)``.

    Returns:
        int64 array of L* values (0-255) with the shape of ``rgb[0]``.
    """
    gamma, cbrt = _opencv_l_tables()
    r, g, b = (gamma[rgb[c]] for c in range(3))
    # Y = 0.212671 R + 0.715160 G + 0.072169 B in 12-bit fixed point, rounded.
    y = (r * 871 + g * 2929 + b * 296 + (1 << 11)) >> 12
    lscale = (116 * 255 + 50) // 100
    lshift = -((16 * 255 * (1 << 15) + 50) // 100)
    return np.clip((lscale * cbrt[y] + lshift + (1 << 14)) >> 15, 0, 255)


# ----------------------------------------------------------------------------- the algorithm
@lru_cache(maxsize=1)
def _od_table() -> np.ndarray:
    # -log(I / 255) computed in float64 and stored in float32, with 0 read as 1.
    levels = np.maximum(np.arange(256, dtype=np.float64), 1.0)
    return -np.log(levels / 255.0).astype(np.float32)


def standardize_brightness(x: np.ndarray) -> np.ndarray:
    """``uint8(clip(x * 255 / p90, 0, 255))`` of one uint8 image (``p90`` over all values)."""
    p90 = np.percentile(x, 90)
    return np.clip(x * 255.0 / p90, 0, 255).astype(np.uint8)


def stain_matrix(
    od: np.ndarray,
    *,
    alpha: float = 0.1,
    max_iter: int = 1000,
    random_state: int = 0,
) -> np.ndarray | None:
    """Stain matrix of tissue optical densities by scikit-learn's dictionary learning.

    Args:
        od: float32 optical densities of the tissue pixels, ``(n, 3)``.
        alpha: Sparsity penalty of the dictionary learning (and of its codes).
        max_iter: Iterations of the dictionary learning (and of its lasso solver).
        random_state: Seed used only to re-initialise an unused component.

    Returns:
        The ``(2, 3)`` stain matrix (rows unit length, haematoxylin first: the larger red
        entry), or ``None`` when it is degenerate (a stain with no entries).
    """
    from sklearn.decomposition import DictionaryLearning

    learner = DictionaryLearning(
        n_components=2,
        alpha=alpha,
        transform_alpha=alpha,
        fit_algorithm="lars",
        transform_algorithm="lasso_lars",
        positive_dict=True,
        max_iter=max_iter,
        transform_max_iter=max_iter,
        random_state=random_state,
    )
    stains = learner.fit_transform(od.T).T  # the (3, 2) code of the channels, transposed
    if stains[0, 0] < stains[1, 0]:
        stains = stains[[1, 0], :]
    norms = np.linalg.norm(stains, axis=1)[:, None]
    if not (np.isfinite(stains).all() and (norms > 0).all()):
        return None
    return stains / norms


class Vahadane(StainNormalizer):
    """Vahadane stain normalizer, equal to slideflow 3.0.2's ``vahadane_sklearn``.

    The fit is ``stain_matrix``: the target's ``(2, 3)`` stain matrix (rows haematoxylin and
    eosin, unit length), as slideflow's ``stain_matrix_target``. The presets ``"v1"`` and
    ``"v2"`` are slideflow's; the default is ``"v2"``, the fit slideflow's normalizer starts
    with (it has no ``"v3"``). See the module docstring for the algorithm and its agreement
    with slideflow. Requires scikit-learn.

    Args:
        fit: Preset name, fit dictionary, target image(s), or ``None`` (unfitted). A list of
            images is fitted as one image made of all their pixels.
        alpha: Sparsity penalty of the dictionary learning (0.1, as slideflow).
        tissue_threshold: Pixels with ``L / 255`` below it (OpenCV's 8-bit L*) are tissue for
            the stain estimate (0.8, as slideflow).
        threshold: Pixels with ``L / 255`` below it are normalised; brighter ones keep their
            brightness-standardised value (0.93, as slideflow).
        max_iter: Iterations of the dictionary learning (1000, as slideflow).
        wrap_overflow: Values above 255 wrap around modulo 256 as in slideflow (``True``);
            ``False`` clips them to 255 instead (a few pixels then differ from slideflow).
        min_tissue: Images with a smaller fraction of tissue pixels are returned unchanged.
    """

    method: ClassVar[str] = "vahadane"
    fit_shapes: ClassVar[dict[str, tuple[int, ...]]] = {"stain_matrix": (2, 3)}
    default_preset: ClassVar[str] = "v2"
    #: scikit-learn's dictionary learning runs on the CPU: each batch makes the round trip.
    runs_on_host: ClassVar[bool] = True

    def __init__(
        self,
        fit: Any = "default",
        *,
        alpha: float = 0.1,
        tissue_threshold: float = 0.8,
        threshold: float = 0.93,
        max_iter: int = 1000,
        wrap_overflow: bool = True,
        min_tissue: float = 0.01,
    ) -> None:
        if alpha <= 0 or max_iter < 1:
            raise HistobagError("alpha must be > 0 and max_iter >= 1")
        self.alpha = float(alpha)
        self.tissue_threshold = float(tissue_threshold)
        self.threshold = float(threshold)
        self.max_iter = int(max_iter)
        self.wrap_overflow = bool(wrap_overflow)
        super().__init__(fit, min_tissue=min_tissue)

    def _params(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "tissue_threshold": self.tissue_threshold,
            "threshold": self.threshold,
            "max_iter": self.max_iter,
            "wrap_overflow": self.wrap_overflow,
            **super()._params(),
        }

    # ----------------------------------------------------------------------------- helpers
    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Standardise one ``(3, N)`` uint8 image; return it, its L* and its ``(N, 3)`` OD."""
        std = standardize_brightness(image)
        lightness = opencv_lightness(std)
        od = _od_table()[np.ascontiguousarray(std.T)]  # (N, 3), pixels in slideflow's order
        return std, lightness, od

    def _stains(self, lightness: np.ndarray, od: np.ndarray) -> np.ndarray | None:
        tissue = lightness / 255.0 < self.tissue_threshold
        if int(tissue.sum()) < min_pixels(tissue.size, self.min_tissue):
            return None
        return stain_matrix(od[tissue], alpha=self.alpha, max_iter=self.max_iter)

    # ----------------------------------------------------------------- subclass interface
    def _fit_pixels(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        _, lightness, od = self._prepare(pixels[0].cpu().numpy())
        stains = self._stains(lightness, od)
        if stains is None:
            raise HistobagError(
                "cannot fit Vahadane: the target has too little tissue (pixels with "
                f"L/255 < {self.tissue_threshold}) or no stain could be separated."
            )
        return {"stain_matrix": torch.from_numpy(stains.astype(np.float64))}

    def _transform(self, x: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        # slideflow keeps its target in float64 for presets: use the stored float64 fit.
        stains_target = self._require_fit()["stain_matrix"].numpy()
        images = x.cpu().numpy()
        out = np.empty_like(images)
        for i, image in enumerate(images):
            out[i] = self._transform_one(image, stains_target)
        return torch.from_numpy(out).to(x.device)

    def _transform_one(self, image: np.ndarray, stains_target: np.ndarray) -> np.ndarray:
        std, lightness, od = self._prepare(image)
        stains = self._stains(lightness, od)
        if stains is None:
            return image
        conc = np.linalg.lstsq(stains.T, od.T, rcond=None)[0].T  # (N, 2)
        values = 255.0 * np.exp(-(conc @ stains_target))  # (N, 3)
        finite = np.isfinite(values)
        if self.wrap_overflow:
            whole = np.trunc(np.where(finite, np.minimum(values, 2.0**52), 0.0))
            normalized = (whole.astype(np.int64) & 0xFF).astype(np.uint8)
        else:
            normalized = np.where(finite, np.clip(values, 0.0, 255.0), 0.0).astype(np.uint8)
        keep = np.maximum(std, 1)  # slideflow's OD step turns black values into 1 in place
        selected = (lightness / 255.0 < self.threshold)[None]
        return np.where(selected, normalized.T, keep)
