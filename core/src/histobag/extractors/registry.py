"""Listing, describing and building extractors by name."""

from __future__ import annotations

import difflib
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histobag import plugins
from histobag.errors import (
    ExtractorArgumentError,
    UnknownExtractorError,
    WeightsError,
    WeightsNotFoundError,
)
from histobag.extractors import weights as wt
from histobag.extractors.base import FeatureExtractor, ModelBuild
from histobag.extractors.catalogue import KNOWN_ELSEWHERE
from histobag.extractors.device import resolve_device
from histobag.extractors.preprocess import resolve_preprocessing
from histobag.extractors.saved import extractor_from_saved_model, is_saved_model
from histobag.specs import ExtractorSpec

if TYPE_CHECKING:
    import torch

#: Pass as ``weights=`` to keep a model's random initialisation (tests, demos without network).
RANDOM_WEIGHTS = "random"


class WeightsMismatchWarning(UserWarning):
    """The loaded weights are not the file the spec describes as official."""


def _matches(value: str, wanted: str | None) -> bool:
    return wanted is None or value.lower() == wanted.lower()


def list_extractors(
    *, license: str | None = None, tag: str | None = None, pack: str | None = None
) -> list[str]:
    """Sorted names of the installed extractors, optionally filtered.

    Args:
        license: Keep models whose SPDX licence equals this (case-insensitive),
            e.g. ``"apache-2.0"``.
        tag: Keep models carrying this tag, e.g. ``"foundation"`` or ``"imagenet"``.
        pack: Keep models from this distribution, e.g. ``"histobag-gpl"``.

    Imports no torch or model code.
    """
    return sorted(
        name
        for name, spec in plugins.extractor_specs().items()
        if _matches(spec.license, license)
        and _matches(spec.pack, pack)
        and (tag is None or tag.lower() in (t.lower() for t in spec.tags))
    )


def _aliases() -> dict[str, ExtractorSpec]:
    table: dict[str, ExtractorSpec] = {}
    for spec in plugins.extractor_specs().values():
        for key in (spec.name, *spec.aliases):
            table[key.lower()] = spec
    return table


def extractor_info(name: str) -> ExtractorSpec:
    """The spec of an installed extractor (by name or alias, case-insensitive).

    Raises:
        UnknownExtractorError: With close matches, or the pack to install for a model that
            histobag knows but whose pack is missing.
    """
    table = _aliases()
    spec = table.get(name.lower()) or plugins.resolve_extractor_spec(name)
    if spec is not None:
        return spec
    message = f"No installed extractor is called {name!r}."
    if name.lower() in KNOWN_ELSEWHERE:
        dist = KNOWN_ELSEWHERE[name.lower()]
        message += f" {name} is provided by {dist}: pip install {dist}"
    else:
        close = difflib.get_close_matches(name.lower(), list(table), n=5, cutoff=0.6)
        if close:
            message += f" Did you mean: {', '.join(close)}?"
        message += " See `histobag list` for what is installed."
    raise UnknownExtractorError(message)


def _check_kwargs(spec: ExtractorSpec, model_kwargs: dict[str, Any]) -> None:
    accepted = set(spec.model_kwargs)
    unknown = sorted(set(model_kwargs) - accepted)
    if unknown:
        common = (
            "weights, device, mixed_precision, resize, center_crop, interpolation, "
            "antialias, norm_mean, norm_std"
        )
        own = ", ".join(spec.model_kwargs) or "none"
        raise ExtractorArgumentError(
            f"{spec.name} got unexpected keyword argument(s) {', '.join(unknown)}. "
            f"Accepted: {common}; model-specific: {own}."
        )
    missing = [k for k in spec.required_kwargs if k not in model_kwargs]
    if missing:
        raise ExtractorArgumentError(
            f"{spec.name} needs {', '.join(f'{k}=...' for k in missing)} "
            f"(e.g. build_feature_extractor({spec.name!r}, {missing[0]}=224))."
        )


def _check_common_args(
    weights: Any, mixed_precision: Any, antialias: Any, norm_mean: Any, norm_std: Any
) -> None:
    """Type checks of the arguments every extractor takes (values recorded in a
    ``bags_config.json`` arrive here unchecked).

    Raises:
        ExtractorArgumentError: Naming the argument and the bad value.
    """
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ExtractorArgumentError(
            f"weights must be a checkpoint file, a folder holding one, None (download) or "
            f"{RANDOM_WEIGHTS!r}, not {weights!r}."
        )
    if not isinstance(mixed_precision, bool) and mixed_precision not in (0, 1):
        raise ExtractorArgumentError(
            f"mixed_precision must be True or False, not {mixed_precision!r}."
        )
    if antialias is not None and not isinstance(antialias, bool):
        raise ExtractorArgumentError(f"antialias must be True, False or None, not {antialias!r}.")
    for arg, value in (("norm_mean", norm_mean), ("norm_std", norm_std)):
        if value is None:
            continue
        numbers: list[float] = []
        if not isinstance(value, (str, bytes)):
            try:
                numbers = [float(v) for v in value]
            except (TypeError, ValueError):
                numbers = []
        positive = arg == "norm_std"
        if (
            len(numbers) != 3
            or not all(math.isfinite(x) for x in numbers)
            or (positive and min(numbers) <= 0)
        ):
            raise ExtractorArgumentError(
                f"{arg} must be three finite numbers (R, G, B on the [0, 1] scale"
                + (", each above 0" if positive else "")
                + f"), not {value!r}."
            )


def build_feature_extractor(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    mixed_precision: bool = True,
    resize: bool | int | None = None,
    center_crop: bool | int | None = None,
    interpolation: str | None = None,
    antialias: bool | None = None,
    norm_mean: tuple[float, float, float] | None = None,
    norm_std: tuple[float, float, float] | None = None,
    **model_kwargs: Any,
) -> FeatureExtractor:
    """Build an installed feature extractor by name, with its pretrained weights.

    Args:
        name: Registered name or alias (see :func:`list_extractors`), or the folder of a model
            saved with :func:`histobag.save_model`.
        weights: A local checkpoint (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
            ``torch.load(weights_only=True)``), or a folder holding one (a download of the
            model's Hugging Face repository, or a ``save_pretrained`` folder). ``None``
            downloads the official weights from Hugging Face (honouring ``HF_TOKEN``,
            ``HF_HUB_OFFLINE`` and the cache);
            ``"random"`` keeps the random initialisation. A local file is recorded (in
            :meth:`~FeatureExtractor.dump_config` and ``bags_config.json``) as its absolute,
            resolved path, with its sha256 in the provenance. Checkpoint tensors of another
            floating-point precision are converted only when no value changes (with a
            warning); integer tensors for floating-point parameters are refused.
        device: ``"cuda"``, ``"cpu"``, ...; default CUDA if available, else CPU.
        mixed_precision: Compute in bfloat16/float16 where the hardware supports it (CUDA, and
            CPUs with AVX512-BF16/AMX); outputs are float32 either way.
        resize: ``None`` keeps the model's default; ``True`` resizes to the model's input size;
            an int resizes the shorter side to that size; ``False`` disables resizing.
        center_crop: Like ``resize``, for a square center crop. Crop runs before resize unless
            the model declares resize-then-crop (e.g. GigaPath).
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``; default the model's.
        antialias: Antialias when resizing; default the model's.
        norm_mean: Normalisation mean (RGB on the [0, 1] scale); default the model's.
        norm_std: Normalisation std; default the model's.
        **model_kwargs: Model-specific arguments (see ``histobag info NAME``).

    Raises:
        UnknownExtractorError: No installed pack provides ``name``.
        ExtractorArgumentError: An unknown keyword argument or bad value (e.g. a device this
            machine does not have).
        WeightsError: Weights could not be found, downloaded or loaded (a missing local file
            is a ``WeightsNotFoundError``, also a ``FileNotFoundError``; keys, shapes or
            dtypes that do not fit are a ``CheckpointMismatchError``).
    """
    _check_common_args(weights, mixed_precision, antialias, norm_mean, norm_std)
    if is_saved_model(name):  # a folder written by histobag.save_model
        return extractor_from_saved_model(
            name,
            weights=weights,
            device=device,
            mixed_precision=mixed_precision,
            resize=resize,
            center_crop=center_crop,
            interpolation=interpolation,
            antialias=antialias,
            norm_mean=norm_mean,
            norm_std=norm_std,
            **model_kwargs,
        )

    spec = extractor_info(name)
    _check_kwargs(spec, model_kwargs)
    torch_device = resolve_device(device)
    factory = spec.load_factory()
    build = factory(spec, **model_kwargs)
    if not isinstance(build, ModelBuild):
        build = ModelBuild(module=build)

    sha, source, weights_file = _load_weights(spec, build, weights)

    overrides = dict(
        resize=resize,
        center_crop=center_crop,
        interpolation=interpolation,
        antialias=antialias,
        norm_mean=norm_mean,
        norm_std=norm_std,
    )
    preprocessing = resolve_preprocessing(
        build.preprocessing or spec.preprocessing, spec.input_size, **overrides
    )
    config_kwargs: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    config_kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in config_kwargs.items()}
    if weights is not None:  # recorded absolute and resolved: rebuildable from any directory
        config_kwargs["weights"] = str(weights_file) if weights_file else RANDOM_WEIGHTS
    if not mixed_precision:
        config_kwargs["mixed_precision"] = False
    # Paths become strings so the configuration stays JSON (bags_config.json, fingerprints).
    config_kwargs.update(
        {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in model_kwargs.items()}
    )
    cls = build.extractor_cls or FeatureExtractor
    return cls(
        spec,
        build,
        preprocessing,
        device=torch_device,
        mixed_precision=mixed_precision,
        config_kwargs=config_kwargs,
        weights_sha256=sha,
        weights_source=source,
    )


def _load_weights(
    spec: ExtractorSpec, build: Any, weights: str | os.PathLike[str] | None
) -> tuple[str | None, str, Path | None]:
    """Find and strictly load the weights.

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
    else:
        hub = build.hub or ((spec.hf_repo, spec.hf_filename) if spec.hf_repo else None)
        if hub is None:
            if not spec.weights_required:
                return None, "none", None
            raise WeightsError(
                f"{spec.name} has no published weights to download; pass weights=/path/to/file."
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
            stacklevel=3,
        )
    return digest, source, local
