"""``FeatureExtractor``: a torch module, its preprocessing and its provenance, in one callable."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histobag.errors import ExtractorArgumentError
from histobag.extractors.autocast_weights import cast_autocast_weights
from histobag.extractors.device import cuda_supports_bf16, with_index
from histobag.extractors.inputs import find_input_handler
from histobag.extractors.preprocess import build_transform, output_size, to_batch
from histobag.specs import ExtractorSpec, Preprocessing

if TYPE_CHECKING:
    import torch


@dataclass
class ModelBuild:
    """What an extractor factory returns.

    Attributes:
        module: Maps a normalised float batch (B, 3, H, W) to embeddings (B, F).
        weights_target: Module the checkpoint's state dict is loaded into (default: ``module``),
            e.g. the backbone inside a pooling wrapper.
        adapt_state_dict: Key remapping from the published checkpoint layout to
            ``weights_target``'s names, applied after unwrapping ``spec.checkpoint_keys``.
        num_features: Embedding length, when it depends on the factory's arguments.
        preprocessing: Default preprocessing, when it depends on the factory's arguments.
        hub: ``(repo, filename)`` of the default weights when they depend on the arguments
            (e.g. the timm architecture behind an ImageNet extractor).
        fixed_input_size: The only input side the network accepts, if it has one.
        input_multiple: What every input side must be a multiple of, if anything (a ViT that
            interpolates its position embeddings still needs whole patches).
        checkpoint_key: Inverse of ``adapt_state_dict``'s renaming for one key, so checkpoint
            mismatch errors name keys as the checkpoint file does.
        extractor_cls: A :class:`FeatureExtractor` subclass adding model-specific methods.
        default_weights: A local checkpoint loaded when no ``weights=`` is given, instead of a
            download (e.g. a saved model's own safetensors file); not recorded, as the
            build finds it again.
        recorded_kwargs: The model arguments to record for a rebuild (``dump_config()``,
            ``bags_config.json``) when the factory normalises them (e.g. drops defaults);
            ``None`` records them as given.
        extra: Model-specific values the extractor class reads (kept as ``extractor.extra``).
    """

    module: torch.nn.Module
    weights_target: torch.nn.Module | None = None
    adapt_state_dict: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    num_features: int | None = None
    preprocessing: Preprocessing | None = None
    hub: tuple[str, str] | None = None
    fixed_input_size: int | None = None
    input_multiple: int | None = None
    checkpoint_key: Callable[[str], str] | None = None
    extractor_cls: type[FeatureExtractor] | None = None
    default_weights: Path | None = None
    recorded_kwargs: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def cpu_supports_fp16() -> bool:
    """Whether this CPU runs float16 matmuls natively (AVX512-FP16 or AMX-FP16)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


#: Spellings accepted for ``precision=`` and what each means: ``"auto"`` (the fastest the
#: device supports: the spec's ``autocast_dtype`` on CUDA, bfloat16 on CPUs that have it),
#: ``"fp32"`` (no autocast), ``"bf16"`` or ``"fp16"`` (autocast to that dtype).
PRECISIONS = {
    "auto": "auto",
    "fp32": "fp32",
    "float32": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
}
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def precision_choice(precision: Any, mixed_precision: Any = True) -> str:
    """The requested precision as ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``mixed_precision=False`` is the older spelling of ``precision="fp32"``.

    Raises:
        ExtractorArgumentError: ``precision`` is not one of :data:`PRECISIONS`, or it asks for
            reduced precision while ``mixed_precision`` is False.
    """
    choice = PRECISIONS.get(precision.lower()) if isinstance(precision, str) else None
    if choice is None:
        raise ExtractorArgumentError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))}, not {precision!r}."
        )
    if mixed_precision:
        return choice
    if choice in ("bf16", "fp16"):
        raise ExtractorArgumentError(
            f"mixed_precision=False (float32) contradicts precision={precision!r}; pass only "
            f"precision= (mixed_precision=False is the same as precision='fp32')."
        )
    return "fp32"


def precision_unsupported(device: torch.device, dtype: str) -> str | None:
    """Why ``device`` cannot compute in ``dtype`` (``"bfloat16"`` or ``"float16"``) under
    autocast, or None when it can.

    A CPU needs the dtype in hardware (without it autocast emulates it, slower than float32);
    a CUDA GPU needs native bfloat16 (compute capability 8.0 or newer, checked for ``device``
    itself, see :func:`~histobag.extractors.device.cuda_supports_bf16`) for bfloat16 (float16
    it always has); other devices need torch's autocast for the dtype.
    """
    import torch

    if device.type == "cpu":
        if dtype == "bfloat16" and not cpu_supports_bf16():
            return "this CPU has no bfloat16 instructions (AVX512-BF16 or AMX)"
        if dtype == "float16" and not cpu_supports_fp16():
            return "this CPU has no float16 instructions (AVX512-FP16 or AMX-FP16)"
        return None
    if device.type == "cuda":  # float16 autocast runs on every CUDA GPU
        if dtype == "bfloat16" and not cuda_supports_bf16(device):
            return (
                "this GPU does not support bfloat16 natively (that needs compute capability "
                "8.0 or newer; older GPUs emulate it, slower than float16)"
            )
        return None
    if not torch.amp.is_autocast_available(device.type):
        return f"torch has no autocast for {device.type} devices"
    with warnings.catch_warnings(record=True) as caught:  # torch warns, then disables it
        warnings.simplefilter("always")
        try:
            torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))
        except (RuntimeError, ValueError) as exc:
            return str(exc).splitlines()[0]
    disabled = [str(w.message).splitlines()[0] for w in caught if "autocast" in str(w.message)]
    return disabled[0] if disabled else None


def select_precision(
    device: torch.device, mixed_precision: bool, autocast_dtype: str, precision: str = "auto"
) -> str:
    """The dtype models compute in on ``device``: ``float32``, ``bfloat16`` or ``float16``.

    Args:
        device: Where the model runs.
        mixed_precision: False is ``precision="fp32"``.
        autocast_dtype: The spec's reduced precision on CUDA (``"auto"``); ``"float32"``
            makes ``"auto"`` mean float32 everywhere.
        precision: One of :data:`PRECISIONS`.

    Raises:
        ExtractorArgumentError: ``precision`` is unknown, contradicts ``mixed_precision``, or
            names a dtype ``device`` cannot compute in (the message says what to use instead).
    """
    choice = precision_choice(precision, mixed_precision)
    if choice == "fp32":
        return "float32"
    if choice != "auto":
        dtype = _DTYPE_NAMES[choice]
        why = precision_unsupported(device, dtype)
        if why is not None:
            usable = [
                name
                for name in ("bf16", "fp16")
                if precision_unsupported(device, _DTYPE_NAMES[name]) is None
            ]
            instead = " or ".join(repr(name) for name in ("fp32", *usable))
            raise ExtractorArgumentError(
                f"precision={precision!r} is not available on {device}: {why}. Use "
                f"precision={instead}, or 'auto' (the fastest this device supports)."
            )
        return dtype
    if autocast_dtype == "float32":  # the official pipeline runs in fp32: so does "auto"
        return "float32"
    if device.type == "cuda":
        if autocast_dtype == "bfloat16" and not cuda_supports_bf16(device):
            return "float16"
        return autocast_dtype
    if device.type == "cpu" and cpu_supports_bf16():
        return "bfloat16"
    return "float32"


def _channels_last() -> torch.memory_format:
    import torch

    return torch.channels_last


def _prefers_channels_last(model: torch.nn.Module) -> bool:
    """Convolutional networks run faster in channels-last layout (oneDNN on CPUs, tensor cores
    on GPUs): measured 2.2x for ResNet-50 in bfloat16 on this project's 2-core CPU."""
    import torch

    convs = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return convs >= 8


class FeatureExtractor:
    """A pretrained model that turns uint8 RGB tiles into float32 feature vectors.

    Build one with :func:`histobag.build_feature_extractor`. Call it on a uint8 batch
    (numpy (B, H, W, 3) or tensor (B, 3, H, W)) to get a float32 tensor (B, num_features);
    preprocessing (:attr:`transform`) runs on the model's device.
    """

    def __init__(
        self,
        spec: ExtractorSpec,
        build: ModelBuild,
        preprocessing: Preprocessing,
        *,
        device: torch.device,
        mixed_precision: bool,
        config_kwargs: Mapping[str, Any],
        weights_sha256: str | None,
        weights_source: str,
        precision: str = "auto",
        compile: bool = False,
    ) -> None:
        device = with_index(device)  # a bare "cuda" would follow whichever GPU is current
        self.spec = spec
        self.model = build.module.eval().to(device)
        self.channels_last = _prefers_channels_last(self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=_channels_last())
        self.preprocessing = preprocessing
        self.device = device
        #: The precision asked for: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        self.requested_precision = precision_choice(precision, mixed_precision)
        self.mixed_precision = self.requested_precision != "fp32"
        #: The dtype the model computes in: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        self.precision = select_precision(
            device, True, spec.autocast_dtype, self.requested_precision
        )
        if self.precision != "float32":  # cast once here, not by autocast at every batch
            import torch

            cast_autocast_weights(self.model, getattr(torch, self.precision), device.type)
        #: Whether the model runs through ``torch.compile`` (compiled at its first batch).
        self.compiled = bool(compile)
        self._compiled_model: tuple[torch.nn.Module, Callable[..., Any]] | None = None
        self.weights_sha256 = weights_sha256
        self.weights_source = weights_source
        self.fixed_input_size = build.fixed_input_size
        self.input_multiple = build.input_multiple
        self._num_features = build.num_features or spec.num_features
        self._config_kwargs = dict(config_kwargs)
        self.transform = build_transform(preprocessing)
        self.extra = dict(build.extra)

    # -- metadata ---------------------------------------------------------------------------
    @property
    def tag(self) -> str:
        """Registered name of the model, e.g. ``"retccl"``."""
        return self.spec.name

    @property
    def num_features(self) -> int:
        """Length of each feature vector."""
        if self._num_features is None:
            raise ExtractorArgumentError(f"{self.tag} did not declare its number of features")
        return self._num_features

    @property
    def license(self) -> str:
        """SPDX identifier of the weights' licence."""
        return self.spec.license

    @property
    def citation(self) -> str:
        """BibTeX entry to cite when publishing results made with this model."""
        return self.spec.citation

    def dump_config(self) -> dict[str, Any]:
        """Registered name and the keyword arguments it was built with (enough to rebuild)."""
        return {"extractor": self.spec.name, "kwargs": dict(self._config_kwargs)}

    def provenance(self) -> dict[str, Any]:
        """What makes features reproducible: weights digest, preprocessing, precision, versions."""
        return {
            "weights_sha256": self.weights_sha256,
            "weights_source": self.weights_source,
            "preprocessing": self.preprocessing.to_dict(),
            "precision": self.precision,
            "compiled": self.compiled,
            "pack": {"name": self.spec.pack, "version": self.spec.version},
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.tag!r}, num_features={self._num_features}, "
            f"device={self.device}, precision={self.precision}, license={self.license!r})"
        )

    # -- running ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Context running the model in :attr:`precision` (a no-op for float32)."""
        import torch

        if self.precision == "float32":
            yield
            return
        dtype = getattr(torch, self.precision)
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) → normalised float32 on the model's device."""
        h, w = batch.shape[-2:]
        expected = self.fixed_input_size
        if expected is not None and output_size(self.preprocessing, h, w) != (expected, expected):
            raise ExtractorArgumentError(
                f"{self.tag} only accepts {expected}x{expected} input, but {w}x{h} tiles "
                f"become {output_size(self.preprocessing, h, w)} after preprocessing. Build it "
                f"with resize=True (resize to {expected}) or extract tiles at "
                f"tile_px={expected}."
            )
        multiple = self.input_multiple
        size = output_size(self.preprocessing, h, w)
        if multiple and (size[0] % multiple or size[1] % multiple):
            raise ExtractorArgumentError(
                f"{self.tag} needs input sides that are multiples of {multiple} (whole "
                f"{multiple}-pixel patches), but {w}x{h} tiles become {size[1]}x{size[0]} after "
                f"preprocessing. Build it with resize=True (its input size) or extract tiles at a "
                f"tile_px that is a multiple of {multiple}."
            )
        non_blocking = self.device.type == "cuda"
        out = self.transform(batch.to(self.device, non_blocking=non_blocking))
        return out.contiguous(memory_format=_channels_last()) if self.channels_last else out

    def forward_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of one uint8 (B, 3, H, W) batch as float32 (B, F) on the model's device."""
        import torch

        with torch.inference_mode(), self.autocast():
            features = self._run_model(self.preprocess(batch))
        return features.float()

    def _run_model(self, inputs: torch.Tensor) -> torch.Tensor:
        """:attr:`model` on a preprocessed batch, through ``torch.compile`` when
        :attr:`compiled` (compiled on first use, and again if :attr:`model` was replaced)."""
        if not self.compiled:
            return self.model(inputs)
        import torch

        try:
            if self._compiled_model is None or self._compiled_model[0] is not self.model:
                # Raises RuntimeError where torch cannot compile at all (e.g. this Python).
                self._compiled_model = (self.model, torch.compile(self.model))
            return self._compiled_model[1](inputs)
        except torch._dynamo.exc.BackendCompilerFailed as exc:  # no compiler, or it failed
            raise self._compile_error(exc) from exc
        except RuntimeError as exc:
            if self._compiled_model is None or self._compiled_model[0] is not self.model:
                raise self._compile_error(exc) from exc
            raise  # the model's own error

    def _compile_error(self, exc: Exception) -> ExtractorArgumentError:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return ExtractorArgumentError(
            f"torch.compile could not compile {self.tag} on {self.device} "
            f"({type(exc).__name__}: {detail}). Build the extractor without compile "
            "(compile=False; on the command line, leave out --compile)."
        )

    def __call__(self, obj: Any, **kwargs: Any) -> Any:
        """Extract features from a uint8 batch, a :class:`histobag.WSI` or a TFRecord path.

        A batch gives a float32 tensor (B, num_features). See the slide and TFRecord guides
        for what a WSI and a TFRecord path return.
        """
        handler = find_input_handler(obj)
        if handler is not None:
            return handler.extract(self, obj, **kwargs)
        if kwargs:
            raise ExtractorArgumentError(
                f"Unexpected keyword arguments for a batch: {', '.join(sorted(kwargs))}"
            )
        return self.forward_batch(to_batch(obj))
