"""The :class:`StainNormalizer` base class and the conversion of its inputs.

A normalizer is *fitted* to a target (reference) appearance, summarised by a few numbers that
:meth:`StainNormalizer.get_fit` returns as JSON-ready lists, and then *transforms* batches of
uint8 RGB tiles towards it on whatever device the batch lives on.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from histobag.errors import ConfigError, HistobagError
from histobag.norm.presets import DEFAULT_PRESET, PRESETS

_N = TypeVar("_N", bound="StainNormalizer")


class StainNormalizer:
    """Base class of the stain normalizers.

    Subclasses set :attr:`method`, declare the shapes of their fit in ``fit_shapes`` and
    implement ``_fit_pixels`` and ``_transform`` on flattened ``(B, 3, H*W)`` uint8 tensors.

    Args:
        fit: ``"default"`` (the class's :attr:`default_preset`: ``"v3"`` for the
            slideflow-named methods, as in slideflow), a preset name, a fit dictionary as
            returned by :meth:`get_fit`, anything :meth:`fit` accepts, or ``None`` to start
            unfitted.
        min_tissue: Fraction of an image's pixels that must be tissue (each method defines
            tissue) for it to be normalised; images with less, e.g. blank background tiles,
            are returned unchanged.
    """

    #: Registered name of the method (``"macenko"``, ``"reinhard"``, ...).
    method: ClassVar[str] = ""
    #: Keys of :meth:`get_fit` and the shape of each value.
    fit_shapes: ClassVar[dict[str, tuple[int, ...]]] = {}
    #: Pixels per chunk when transforming on a CPU (see :meth:`transform`).
    cpu_chunk_pixels: ClassVar[int] = 1 << 19
    #: The preset ``fit="default"`` (and ``autoselect(method)``) stands for.
    default_preset: ClassVar[str] = DEFAULT_PRESET
    #: Whether :meth:`transform` computes on the host, copying each batch to the CPU and back
    #: (only for algorithms that need a CPU library); otherwise a batch never waits for its
    #: device: constant tables are cached per device and no value is read back mid-batch.
    runs_on_host: ClassVar[bool] = False

    def __init__(self, fit: Any = "default", *, min_tissue: float = 0.01) -> None:
        if not 0.0 <= min_tissue < 1.0:
            raise HistobagError(f"min_tissue must be in [0, 1), got {min_tissue!r}")
        self.min_tissue = float(min_tissue)
        self._fit: dict[str, torch.Tensor] | None = None
        self._fit_source = ""
        self._device_fit: dict[tuple[str, torch.dtype], dict[str, torch.Tensor]] = {}
        if isinstance(fit, Mapping):
            self.set_fit(**fit)
        elif fit is not None:
            self.fit(fit)

    # ----------------------------------------------------------------------------- fitting
    @property
    def fitted(self) -> bool:
        """Whether the normalizer has a target (from a preset, :meth:`fit` or :meth:`set_fit`)."""
        return self._fit is not None

    def fit(self: _N, target: Any) -> _N:
        """Fit the normalizer to a target appearance.

        Args:
            target: A preset name (see :data:`histobag.norm.presets.PRESETS`); a uint8 RGB
                image as a numpy ``(H, W, 3)`` array, a torch ``(3, H, W)`` or ``(H, W, 3)``
                tensor, a PIL image or a path to an image file; a batch (numpy
                ``(B, H, W, 3)`` or torch ``(B, 3, H, W)``); or an iterable of images, which
                are fitted jointly (their pixels pooled as if they were one image).

        Returns:
            ``self``, fitted.

        Raises:
            HistobagError: The target cannot be read, is not uint8 RGB, names no preset or
                file, or contains too little tissue.
        """
        presets = PRESETS.get(self.method, {})
        if isinstance(target, str) and target == "default":
            target = self.default_preset
        if isinstance(target, str) and target in presets:
            self.set_fit(**presets[target])
            self._fit_source = f"preset {target!r}"
            return self
        if isinstance(target, str) and not Path(target).exists():
            raise HistobagError(
                f"{target!r} is neither a {self.method} preset ({', '.join(sorted(presets))}) "
                "nor an existing image file."
            )
        images = load_images(target)
        pixels = torch.cat([im.reshape(3, -1) for im in images], dim=1).unsqueeze(0)
        with torch.no_grad():
            fit = self._fit_pixels(pixels)
        self._store(fit)
        self._fit_source = f"fitted on {len(images)} image{'s' if len(images) != 1 else ''}"
        return self

    def get_fit(self) -> dict[str, list[Any]]:
        """Return the fit as a JSON-serialisable dictionary of (nested) lists of floats.

        ``set_fit(**get_fit())`` restores it exactly (floats are float64 throughout).

        Raises:
            HistobagError: The normalizer is not fitted.
        """
        return {k: v.tolist() for k, v in self._require_fit().items()}

    def set_fit(self: _N, **fit: Any) -> _N:
        """Set the fit from keyword arguments, as returned by :meth:`get_fit`.

        Returns:
            ``self``, fitted.

        Raises:
            ConfigError: Keys are missing or unexpected, or values have the wrong shape or are
                not finite.
        """
        expected = set(self.fit_shapes)
        if set(fit) != expected:
            raise ConfigError(
                f"{type(self).__name__}.set_fit() needs exactly the keys "
                f"{sorted(expected)}; got {sorted(fit)}. Pass the dictionary from get_fit()."
            )
        tensors: dict[str, torch.Tensor] = {}
        for key, shape in self.fit_shapes.items():
            try:
                value = torch.as_tensor(np.asarray(fit[key], dtype=np.float64))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"fit[{key!r}] is not numeric: {fit[key]!r}") from exc
            if tuple(value.shape) != shape:
                raise ConfigError(
                    f"fit[{key!r}] must have shape {list(shape)}, got {list(value.shape)}"
                )
            if not torch.isfinite(value).all():
                raise ConfigError(f"fit[{key!r}] contains NaN or infinity: {fit[key]!r}")
            tensors[key] = value
        self._check_fit(tensors)
        self._store(tensors)
        self._fit_source = "set_fit"
        return self

    def _check_fit(self, fit: dict[str, torch.Tensor]) -> None:
        """Validate a fit's values beyond shape (subclasses raise :class:`ConfigError`)."""

    def _store(self, fit: dict[str, torch.Tensor]) -> None:
        self._fit = {k: v.detach().to("cpu", torch.float64).clone() for k, v in fit.items()}
        self._device_fit = {}

    def _require_fit(self) -> dict[str, torch.Tensor]:
        if self._fit is None:
            raise HistobagError(
                f"{type(self).__name__} is not fitted: call .fit(image) or .fit("
                f"{self.default_preset!r}), or construct it with fit={self.default_preset!r}."
            )
        return self._fit

    def _target(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        key = (str(device), dtype)
        if key not in self._device_fit:
            fit = self._require_fit()
            self._device_fit[key] = {k: v.to(device=device, dtype=dtype) for k, v in fit.items()}
        return self._device_fit[key]

    # --------------------------------------------------------------------------- transform
    def transform(self, batch: Any) -> Any:
        """Normalise uint8 RGB images towards the fitted target.

        Args:
            batch: A uint8 torch tensor ``(B, 3, H, W)`` or ``(3, H, W)`` on any device, or a
                uint8 numpy array ``(B, H, W, 3)`` or ``(H, W, 3)``.

        Returns:
            The normalised images as the same kind of object, with the same shape, layout,
            dtype and device. Images with too little tissue are returned unchanged.

        Raises:
            HistobagError: Not fitted, or the input is not uint8 RGB in a supported layout.
        """
        self._require_fit()
        x, restore = as_batch(batch)
        b, _, h, w = x.shape
        if x.numel() == 0:
            return restore(x.clone())
        flat = x.reshape(b, 3, h * w)
        target = self._target(x.device, torch.float32)
        # On CPUs, a few images at a time keep the many per-pixel temporaries in cache; on
        # accelerators the whole batch is one set of kernels. Results are the same either way.
        step = b if x.device.type != "cpu" else max(1, self.cpu_chunk_pixels // (h * w))
        with torch.no_grad():
            parts = [self._transform(part, target) for part in flat.split(step)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return restore(out.reshape(b, 3, h, w))

    def __call__(self, batch: Any) -> Any:
        """Alias of :meth:`transform`, so a normalizer can sit in a transform pipeline."""
        return self.transform(batch)

    # ------------------------------------------------------------------ subclass interface
    def _fit_pixels(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fit to the uint8 pixels ``(1, 3, N)`` of the pooled target images."""
        raise NotImplementedError

    def _transform(self, x: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalise uint8 images ``(B, 3, N)``; ``target`` holds the fit as float32 tensors."""
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        """Hyperparameters shown by ``repr`` (subclasses extend)."""
        return {"min_tissue": self.min_tissue}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        state = f"fitted=True ({self._fit_source})" if self.fitted else "fitted=False"
        return f"{type(self).__name__}(method={self.method!r}, {state}, {params})"

    def __deepcopy__(self, memo: dict[int, Any]) -> StainNormalizer:
        new = copy.copy(self)
        new._fit = None if self._fit is None else {k: v.clone() for k, v in self._fit.items()}
        new._device_fit = {}
        return new


# ------------------------------------------------------------------------------ conversions
def as_batch(batch: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """Turn a transform input into a uint8 ``(B, 3, H, W)`` tensor and a function undoing it.

    Args:
        batch: A uint8 torch tensor ``(B, 3, H, W)`` / ``(3, H, W)``, or a uint8 numpy array
            ``(B, H, W, 3)`` / ``(H, W, 3)``.

    Returns:
        ``(tensor, restore)``: ``restore`` maps a ``(B, 3, H, W)`` result back to the input's
        kind and layout.
    """
    if isinstance(batch, np.ndarray):
        _check_uint8(batch.dtype == np.uint8, batch.dtype)
        if batch.ndim not in (3, 4) or batch.shape[-1] != 3:
            raise HistobagError(
                f"numpy images must be (H, W, 3) or (B, H, W, 3) RGB, got shape {batch.shape}"
            )
        single = batch.ndim == 3
        t = torch.from_numpy(np.ascontiguousarray(batch[None] if single else batch))
        t = t.permute(0, 3, 1, 2)

        def restore_np(out: torch.Tensor) -> np.ndarray:
            arr = np.ascontiguousarray(out.permute(0, 2, 3, 1).cpu().numpy())
            return arr[0] if single else arr

        return t, restore_np
    if isinstance(batch, torch.Tensor):
        _check_uint8(batch.dtype == torch.uint8, batch.dtype)
        if batch.dim() == 3 and batch.shape[0] == 3:
            return batch.unsqueeze(0), lambda out: out[0]
        if batch.dim() == 4 and batch.shape[1] == 3:
            return batch, lambda out: out
        raise HistobagError(
            f"tensor images must be (B, 3, H, W) or (3, H, W) RGB, got shape "
            f"{tuple(batch.shape)}; permute channels-last tensors first."
        )
    raise HistobagError(
        f"cannot normalise a {type(batch).__name__}: pass a uint8 torch tensor (B, 3, H, W) or "
        "a uint8 numpy array (B, H, W, 3)."
    )


def _check_uint8(ok: bool, dtype: Any) -> None:
    if not ok:
        raise HistobagError(
            f"stain normalizers take uint8 RGB images (0-255), got dtype {dtype}; convert with "
            "(x * 255).round().clamp(0, 255).to(torch.uint8) if you have floats in [0, 1]."
        )


def load_images(target: Any) -> list[torch.Tensor]:
    """Read fit targets into a list of uint8 ``(3, H, W)`` CPU tensors.

    Accepts everything :meth:`StainNormalizer.fit` accepts except preset names.
    """
    if isinstance(target, (str, os.PathLike)):
        return [_read_file(Path(target))]
    if isinstance(target, np.ndarray):
        _check_uint8(target.dtype == np.uint8, target.dtype)
        if target.ndim == 3 and target.shape[-1] == 3:
            return [torch.from_numpy(np.ascontiguousarray(target)).permute(2, 0, 1)]
        if target.ndim == 4 and target.shape[-1] == 3:
            return list(torch.from_numpy(np.ascontiguousarray(target)).permute(0, 3, 1, 2))
        raise HistobagError(
            f"numpy targets must be (H, W, 3) or (B, H, W, 3) RGB, got shape {target.shape}"
        )
    if isinstance(target, torch.Tensor):
        _check_uint8(target.dtype == torch.uint8, target.dtype)
        t = target.detach().cpu()
        if t.dim() == 3 and t.shape[0] == 3:
            return [t]
        if t.dim() == 3 and t.shape[-1] == 3:
            return [t.permute(2, 0, 1)]
        if t.dim() == 4 and t.shape[1] == 3:
            return list(t)
        raise HistobagError(
            f"tensor targets must be (3, H, W), (H, W, 3) or (B, 3, H, W), got {tuple(t.shape)}"
        )
    if _is_pil(target):
        return [torch.from_numpy(np.array(target.convert("RGB"))).permute(2, 0, 1)]
    if isinstance(target, Iterable) and not isinstance(target, (bytes, Mapping)):
        images = [im for item in target for im in load_images(item)]
        if not images:
            raise HistobagError("cannot fit a stain normalizer to an empty list of images")
        return images
    raise HistobagError(
        f"cannot fit a stain normalizer to a {type(target).__name__}: pass a preset name, an "
        "image (numpy, torch, PIL or a file path) or a list of images."
    )


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL comes with torchvision
        return False
    return isinstance(obj, Image.Image)


def _read_file(path: Path) -> torch.Tensor:
    try:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise HistobagError(f"cannot read target image {str(path)!r}: {exc}") from exc
    return torch.from_numpy(arr).permute(2, 0, 1)
