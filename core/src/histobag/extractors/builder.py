"""The one build path from a spec to a :class:`FeatureExtractor`.

Registered names (:func:`histobag.build_feature_extractor`) and saved-model folders
(:func:`histobag.extractors.saved.saved_model_spec`) both end in :func:`build_extractor`, so
devices, weights, preprocessing and the recorded arguments work the same way for both.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histobag.errors import ExtractorArgumentError, PluginError, WeightsError, WeightsNotFoundError
from histobag.extractors import weights as wt
from histobag.extractors.base import (
    FeatureExtractor,
    ModelBuild,
    precision_choice,
    select_precision,
)
from histobag.extractors.device import make_current, resolve_device
from histobag.extractors.preprocess import PreprocessingOverrides
from histobag.specs import ExtractorSpec

if TYPE_CHECKING:
    import torch

__all__ = ["RANDOM_WEIGHTS", "WeightsMismatchWarning", "accepted_arguments", "build_extractor"]

RANDOM_WEIGHTS = "random"
"""Pass as ``weights=`` to keep a model's random initialisation (tests, demos without network)."""


class WeightsMismatchWarning(UserWarning):
    """The loaded weights are not the file the spec describes as official."""


def accepted_arguments(spec: ExtractorSpec) -> str:
    """The keyword arguments ``spec`` accepts, for error messages: those every extractor takes
    (the build's own and :class:`PreprocessingOverrides`), then the model's own."""
    common = ", ".join(
        (
            "weights",
            "device",
            "precision",
            "mixed_precision",
            "compile",
            *PreprocessingOverrides.names(),
        )
    )
    return f"{common}; model-specific: {', '.join(spec.model_kwargs) or 'none'}"


def build_extractor(
    spec: ExtractorSpec,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    mixed_precision: bool = True,
    precision: str = "auto",
    compile: bool = False,
    **kwargs: Any,
) -> FeatureExtractor:
    """Build the extractor ``spec`` describes; see :func:`histobag.build_feature_extractor`
    for the arguments.

    Steps:

    1. Check the arguments: ``weights``, ``precision``, ``mixed_precision`` and ``compile``,
       the preprocessing overrides (:class:`PreprocessingOverrides`, split from ``kwargs``),
       and the rest, the model's own arguments, against ``spec.model_kwargs`` and
       ``spec.required_kwargs``, before anything is built.
    2. Resolve the device (:func:`~histobag.extractors.device.resolve_device`; a GPU is
       always indexed, ``cuda:<k>``), check that it computes in the precision asked for
       (:func:`~histobag.extractors.base.select_precision`), and make it the current GPU
       (:func:`~histobag.extractors.device.make_current`).
    3. ``spec``'s factory: ``factory(spec, **model_kwargs)`` gives a :class:`ModelBuild` (a bare
       ``torch.nn.Module`` is wrapped in one).
    4. Weights: ``"random"`` keeps the initialisation; a local file (or a folder holding one);
       else the build's own file (``ModelBuild.default_weights``, e.g. a saved model's
       safetensors); else the Hugging Face download of ``build.hub`` or of the spec's
       repository; else none, where the spec allows it. The checkpoint is unwrapped by
       ``spec.checkpoint_keys``, remapped by ``build.adapt_state_dict`` and loaded strictly.
    5. Preprocessing: ``build.preprocessing`` (or the spec's) with the overrides applied.
    6. Recorded arguments (:meth:`FeatureExtractor.dump_config`, ``bags_config.json``; enough
       to rebuild): the overrides given, ``weights`` when given (an absolute path, or
       ``"random"``), float32 as ``mixed_precision=False`` (as before ``precision`` existed,
       so such folders keep their fingerprint), ``precision`` when ``"bf16"`` or ``"fp16"``,
       ``compile`` when True, and the model's arguments (as the factory normalised them in
       ``build.recorded_kwargs``, else as given; paths as strings).
    7. The extractor: ``build.extractor_cls`` (default :class:`FeatureExtractor`), which
       moves the model to the device and, in bfloat16 or float16, stores its linear and
       convolution weights in that dtype
       (:func:`~histobag.extractors.autocast_weights.cast_autocast_weights`).

    Raises:
        ExtractorArgumentError: An unknown keyword argument or a bad value.
        WeightsError: The weights could not be found, downloaded or loaded.
    """
    _check_build_args(weights, mixed_precision, compile)
    choice = precision_choice(precision, mixed_precision)
    overrides, model_kwargs = PreprocessingOverrides.split(kwargs)
    _check_model_kwargs(spec, model_kwargs)
    torch_device = resolve_device(device)
    select_precision(torch_device, True, spec.autocast_dtype, choice)  # refuse before building
    make_current(torch_device)  # what follows the current GPU, not a tensor's, goes there too

    build = spec.load_factory()(spec, **model_kwargs)
    if not isinstance(build, ModelBuild):
        build = ModelBuild(module=build)

    sha, source, weights_file = _load_weights(spec, build, weights)
    preprocessing = overrides.apply(build.preprocessing or spec.preprocessing, spec.input_size)

    recorded = overrides.recorded()
    if weights is not None:  # recorded absolute and resolved: rebuildable from any directory
        recorded["weights"] = str(weights_file) if weights_file else RANDOM_WEIGHTS
    if choice == "fp32":
        recorded["mixed_precision"] = False
    elif choice != "auto":
        recorded["precision"] = choice
    if compile:
        recorded["compile"] = True
    model_args = model_kwargs if build.recorded_kwargs is None else build.recorded_kwargs
    # Paths become strings so the configuration stays JSON (bags_config.json, fingerprints).
    recorded.update(
        {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in model_args.items()}
    )

    cls = build.extractor_cls or FeatureExtractor
    if spec.kind == "tile_features" and not callable(getattr(cls, "embed_bag", None)):
        # The slide-encoder class lives above this layer; it is recognised by what it does.
        raise PluginError(
            f"{spec.name} is a slide encoder (kind='tile_features'): its factory must return "
            "ModelBuild(extractor_cls=histobag.slide_encoding.SlideEncoderExtractor or a "
            f"subclass), not {cls.__name__}."
        )
    return cls(
        spec,
        build,
        preprocessing,
        device=torch_device,
        mixed_precision=choice != "fp32",
        config_kwargs=recorded,
        weights_sha256=sha,
        weights_source=source,
        precision=choice,
        compile=compile,
    )


def _check_build_args(weights: Any, mixed_precision: Any, compile: Any) -> None:
    """Type checks of the build arguments (values recorded in a ``bags_config.json`` arrive
    here unchecked; the preprocessing ones are checked by :class:`PreprocessingOverrides`)."""
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ExtractorArgumentError(
            f"weights must be a checkpoint file, a folder holding one, None (download) or "
            f"{RANDOM_WEIGHTS!r}, not {weights!r}."
        )
    if not isinstance(mixed_precision, bool) and mixed_precision not in (0, 1):
        raise ExtractorArgumentError(
            f"mixed_precision must be True or False, not {mixed_precision!r}."
        )
    if not isinstance(compile, bool) and compile not in (0, 1):
        raise ExtractorArgumentError(f"compile must be True or False, not {compile!r}.")


def _check_model_kwargs(spec: ExtractorSpec, model_kwargs: Mapping[str, Any]) -> None:
    unknown = sorted(set(model_kwargs) - set(spec.model_kwargs))
    if unknown:
        raise ExtractorArgumentError(
            f"{spec.name} got unexpected keyword argument(s) {', '.join(unknown)}. "
            f"Accepted: {accepted_arguments(spec)}."
        )
    missing = [k for k in spec.required_kwargs if k not in model_kwargs]
    if missing:
        raise ExtractorArgumentError(
            f"{spec.name} needs {', '.join(f'{k}=...' for k in missing)} "
            f"(e.g. build_feature_extractor({spec.name!r}, {missing[0]}=224))."
        )


def _load_weights(
    spec: ExtractorSpec, build: ModelBuild, weights: str | os.PathLike[str] | None
) -> tuple[str | None, str, Path | None]:
    """Find and strictly load the weights (step 4 of :func:`build_extractor`).

    Returns:
        (sha256, where they came from, the local checkpoint file as an absolute resolved path
        when the user passed one, else None).
    """
    if weights is not None and str(weights) == RANDOM_WEIGHTS:
        return None, RANDOM_WEIGHTS, None
    local: Path | None = None
    if weights is not None:
        path = Path(weights).expanduser().resolve()
        if not path.exists():
            spelled = f"{weights} (resolved to {path})" if str(weights) != str(path) else path
            raise WeightsNotFoundError(
                f"Weights file not found: {spelled}. Check the path passed as weights=."
            )
        if path.is_dir():
            preferred = build.hub[1] if build.hub else spec.hf_filename
            path = wt.checkpoint_in_folder(path, preferred, model=spec.name)
        local, source = path, str(path)
    elif build.default_weights is not None:
        path = Path(build.default_weights)
        source = str(path)
    else:
        hub = build.hub or ((spec.hf_repo, spec.hf_filename) if spec.hf_repo else None)
        if hub is None:
            if not spec.weights_required:
                return None, "none", None
            where = f" {spec.weights_help}" if spec.weights_help else ""
            raise WeightsError(
                f"{spec.name} has no weights to download from Hugging Face; pass "
                f"weights=/path/to/file.{where}"
            )
        repo, filename = hub
        revision = spec.hf_revision if build.hub is None else None
        path = wt.download(wt.HubFile(repo, filename or "", revision, spec.gated), model=spec.name)
        source = f"hf://{repo}/{filename}" + (f"@{revision}" if revision else "")
    checkpoint = wt.read_checkpoint(path)
    state_dict = wt.unwrap(checkpoint, spec.checkpoint_keys)
    if build.adapt_state_dict is not None:
        state_dict = build.adapt_state_dict(state_dict)
    wt.load_strict(
        build.weights_target or build.module,
        state_dict,
        source=source,
        model=spec.name,
        key_name=build.checkpoint_key,
    )
    digest = wt.sha256sum(path)
    if spec.sha256 and digest != spec.sha256:
        warnings.warn(
            f"{path} (sha256 {digest[:12]}...) is not the official {spec.name} checkpoint "
            f"(sha256 {spec.sha256[:12]}...). It loaded, but features will differ from the "
            "published model's; this is expected for retrained or fine-tuned weights.",
            WeightsMismatchWarning,
            stacklevel=4,  # the user's call of build_feature_extractor
        )
    return digest, source, local
