"""Listing, describing and building extractors by name (or saved-model folder).

``RANDOM_WEIGHTS`` and ``WeightsMismatchWarning`` live in
:mod:`histobag.extractors.builder` and are importable from here too.
"""

from __future__ import annotations

import difflib
import os
from typing import TYPE_CHECKING, Any

from histobag import plugins
from histobag.errors import ArgumentError, ExtractorArgumentError, UnknownExtractorError
from histobag.extractors.base import FeatureExtractor
from histobag.extractors.builder import RANDOM_WEIGHTS, WeightsMismatchWarning, build_extractor
from histobag.extractors.catalogue import KNOWN_ELSEWHERE
from histobag.extractors.saved import is_saved_model, saved_model_spec
from histobag.specs import EXTRACTOR_KINDS, MEAN_POOLING_PREFIX, ExtractorSpec, mean_pooling_spec

if TYPE_CHECKING:
    import torch

__all__ = [
    "RANDOM_WEIGHTS",
    "WeightsMismatchWarning",
    "build_feature_extractor",
    "extractor_info",
    "list_extractors",
    "require_tile_encoder",
]


def _matches(value: str, wanted: str | None) -> bool:
    return wanted is None or value.lower() == wanted.lower()


def list_extractors(
    *,
    license: str | None = None,
    tag: str | None = None,
    pack: str | None = None,
    kind: str | None = None,
) -> list[str]:
    """Sorted names of the installed extractors, optionally filtered (filters combine).

    Imports no torch or model code.

    Args:
        license: Keep models whose SPDX licence equals this (case-insensitive),
            e.g. ``"apache-2.0"``.
        tag: Keep models carrying this tag, e.g. ``"foundation"`` or ``"imagenet"``.
        pack: Keep models from this distribution, e.g. ``"histobag-gpl"``.
        kind: Keep models of this kind (see :data:`histobag.specs.EXTRACTOR_KINDS`):
            ``"tiles"`` for tile encoders (uint8 tiles in, what feature bags are made with),
            ``"tile_features"`` for slide encoders (a slide's tile features in).

    Returns:
        The registered names (aliases are not listed).

    Raises:
        ArgumentError: ``kind`` is not one of the kinds.

    Examples:
        >>> list_extractors(kind="tile_features")  # with histobag-noncommercial
        ['gigapath.slide']
        >>> list_extractors(pack="histobag-gpl")
        ['ctranspath', 'retccl']
        >>> list_extractors(tag="imagenet", license="apache-2.0")[:2]
        ['convnext_tiny_imagenet', 'densenet121_imagenet']
    """
    if kind is not None and kind not in EXTRACTOR_KINDS:
        raise ArgumentError(f"kind must be one of {', '.join(EXTRACTOR_KINDS)}, not {kind!r}.")
    return sorted(
        name
        for name, spec in plugins.extractor_specs().items()
        if _matches(spec.license, license)
        and _matches(spec.pack, pack)
        and (kind is None or spec.kind == kind)
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
    if name.lower().startswith(MEAN_POOLING_PREFIX):
        return mean_pooling_spec(extractor_info(name[len(MEAN_POOLING_PREFIX) :]))
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


def build_feature_extractor(
    name: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    mixed_precision: bool = True,
    precision: str = "auto",
    compile: bool = False,
    **kwargs: Any,
) -> FeatureExtractor:
    """Build an installed feature extractor by name, with its pretrained weights.

    Registered names and saved-model folders take one build path
    (:func:`histobag.extractors.builder.build_extractor`, whose docstring lists its steps).

    Args:
        name: Registered name or alias (see :func:`list_extractors`), or the folder of a model
            saved with :func:`histobag.save_model`.
        weights: A local checkpoint (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with
            ``torch.load(weights_only=True)``), or a folder holding one (a download of the
            model's Hugging Face repository, or a ``save_pretrained`` folder). ``None``
            downloads the official weights from Hugging Face (honouring ``HF_TOKEN``,
            ``HF_HUB_OFFLINE`` and the cache), or for a saved model uses the folder's own;
            ``"random"`` keeps the random initialisation. A local file is recorded (in
            :meth:`~FeatureExtractor.dump_config` and ``bags_config.json``) as its absolute,
            resolved path, with its sha256 in the provenance. Checkpoint tensors of another
            floating-point precision are converted only when no value changes (with a
            warning); integer tensors for floating-point parameters are refused.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``, ...; default the current CUDA GPU if
            available, else CPU. A bare ``"cuda"`` means the current GPU; the extractor's
            device is always indexed (``cuda:<k>``), and building makes it the current GPU.
        mixed_precision: Compute in bfloat16/float16 where the hardware supports it (CUDA, and
            CPUs with AVX512-BF16/AMX); outputs are float32 either way. ``False`` is
            ``precision="fp32"``.
        precision: What the model computes in (outputs are float32 either way): ``"auto"``
            (the fastest the device supports: the model's reduced precision on CUDA, usually
            bfloat16, float16 on GPUs without native bfloat16 (before compute capability
            8.0: T4, V100); bfloat16 on CPUs with AVX512-BF16/AMX,
            else float32), ``"fp32"`` (no autocast), ``"bf16"`` or ``"fp16"`` (autocast to
            that dtype; refused on a device that cannot compute in it, e.g. ``"bf16"`` on a
            CPU without bfloat16 instructions). ``"float32"``, ``"bfloat16"`` and
            ``"float16"`` are accepted too. The dtype used is ``extractor.precision`` and
            ``provenance()["precision"]``; a choice other than ``"auto"`` is recorded, so a
            rebuild computes the same way. In bfloat16 or float16 the linear and convolution
            weights are stored in that dtype (what autocast would cast them to at every
            batch), so ``extractor.model`` itself runs under ``extractor.autocast()``.
        compile: Run the model through ``torch.compile`` (default mode), compiled at the first
            batch (seconds to minutes, and again for a new batch shape); recorded, and shown as
            ``provenance()["compiled"]``. Needs a working compiler (a C++ compiler on CPUs,
            Triton on GPUs); where it fails the first batch raises
            :class:`~histobag.errors.ExtractorArgumentError` saying to build without it.
        **kwargs: Preprocessing overrides, each ``None`` by default (the model's own), see
            :class:`~histobag.extractors.preprocess.PreprocessingOverrides`: ``resize``
            (``True``: the model's input size, an int: that size, ``False``: off),
            ``center_crop`` (likewise; crop runs before resize unless the model declares
            resize-then-crop, e.g. GigaPath), ``interpolation`` (``"bilinear"``,
            ``"bicubic"`` or ``"nearest"``), ``antialias``, ``norm_mean`` and ``norm_std``
            (RGB on the [0, 1] scale). Then the model-specific arguments (see
            ``histobag info NAME``).

    Raises:
        UnknownExtractorError: No installed pack provides ``name``.
        ExtractorArgumentError: An unknown keyword argument or bad value (e.g. a device this
            machine does not have, a precision the device cannot compute in, or
            ``mixed_precision=False`` with ``precision="bf16"``).
        WeightsError: Weights could not be found, downloaded or loaded (a missing local file
            is a ``WeightsNotFoundError``, also a ``FileNotFoundError``; keys, shapes or
            dtypes that do not fit are a ``CheckpointMismatchError``).
    """
    spec = saved_model_spec(name) if is_saved_model(name) else extractor_info(os.fspath(name))
    return build_extractor(
        spec,
        weights=weights,
        device=device,
        mixed_precision=mixed_precision,
        precision=precision,
        compile=compile,
        **kwargs,
    )


def require_tile_encoder(extractor: Any) -> None:
    """Refuse a slide encoder where tiles are turned into features (feature bags).

    Cheap for a name (reads the spec only: no torch, no model), so callers check before any
    slide is opened.

    Args:
        extractor: A registered name or alias, a saved-model folder, or a built extractor.

    Raises:
        ExtractorArgumentError: ``extractor`` consumes tile features (``kind="tile_features"``);
            the message names the tile encoder to use first.
        UnknownExtractorError: No installed pack provides the name.
    """
    if isinstance(extractor, (str, os.PathLike)):
        if is_saved_model(extractor):
            return  # saved models are timm networks over tiles
        spec = extractor_info(os.fspath(extractor))
    else:
        spec = getattr(extractor, "spec", None)
        if not isinstance(spec, ExtractorSpec):
            return
    if spec.kind == "tiles":
        return
    use = (
        f"use {spec.tile_encoder}"
        if spec.tile_encoder
        else "use one of `histobag list --kind tiles`"
    )
    raise ExtractorArgumentError(
        f"{spec.name} is a slide encoder (it consumes tile features); feature bags are made "
        f"with a tile encoder: {use}, then run {spec.name} on the bags (see "
        f"`histobag info {spec.name}`)."
    )
