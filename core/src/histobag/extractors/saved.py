"""Trained models saved as a folder: safetensors weights + ``config.json``.

Layout of a saved model::

    <folder>/config.json         format, timm architecture, tile size, outcome labels,
                                 preprocessing, stain normalizer (JSON only)
    <folder>/model.safetensors   the state dict of the timm model

:func:`save_model` writes one from a fine-tuned timm model. :func:`saved_model_spec` turns a
folder into an :class:`~histobag.specs.ExtractorSpec` built by the same builder as registered
models (``build_feature_extractor('/path/to/folder')``, or its alias
:func:`extractor_from_saved_model`), with any layer(s) as features and optionally the
classifier's logits appended. Nothing is unpickled (DESIGN principle 4).

This module imports no torch or timm at import time.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histobag.errors import ConfigError, ExtractorArgumentError, HistobagError
from histobag.extractors.base import FeatureExtractor, ModelBuild
from histobag.extractors.builder import build_extractor
from histobag.extractors.weights import sha256sum
from histobag.files import atomic_path, write_json_atomic
from histobag.norm import normalizer_config
from histobag.specs import ExtractorSpec, Preprocessing

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "extractor_from_saved_model",
    "is_saved_model",
    "read_model_config",
    "save_model",
    "saved_model_spec",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
_FORMAT = "histobag-model"
_VERSION = 1


def is_saved_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a histobag ``config.json`` (cheap: no torch)."""
    try:
        file = Path(path) / CONFIG_FILE
        if not file.is_file():
            return False
        return json.loads(file.read_text(encoding="utf-8")).get("format") == _FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _require_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise HistobagError(
            "Saved models are timm architectures and need timm: pip install timm "
            "(or pip install histobag-apache, which depends on it)."
        ) from None
    return timm


def _labels_list(outcome_labels: Sequence[Any] | Mapping[Any, Any]) -> list[str]:
    """Outcome labels as a list indexed by class (a mapping is {index: name})."""
    if isinstance(outcome_labels, Mapping):
        try:
            items = sorted((int(k), str(v)) for k, v in outcome_labels.items())
        except (TypeError, ValueError):
            raise ExtractorArgumentError(
                "outcome_labels as a mapping must be {class index: name}."
            ) from None
        if [k for k, _ in items] != list(range(len(items))):
            raise ExtractorArgumentError("outcome_labels must cover class indices 0..n-1.")
        return [v for _, v in items]
    return [str(v) for v in outcome_labels]


def _normalizer_dict(normalizer: Any) -> dict[str, Any] | None:
    if normalizer is None:
        return None
    if isinstance(normalizer, str):
        return {"method": normalizer, "fit": None}
    if isinstance(normalizer, Mapping):
        return {"method": str(normalizer["method"]), "fit": normalizer.get("fit")}
    return normalizer_config(normalizer)


def save_model(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    tile_px: int,
    tile_um: float | str,
    outcome_labels: Sequence[Any] | Mapping[Any, Any],
    outcome: str | None = None,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    normalizer: Any = None,
    model_kwargs: Mapping[str, Any] | None = None,
    license: str = "unknown",
    description: str = "",
    overwrite: bool = False,
) -> Path:
    """Save a fine-tuned timm model as a histobag model folder.

    Args:
        model: The timm model (``timm.create_model(arch, num_classes=len(outcome_labels))``
            or compatible), fine-tuned.
        path: Folder to write (created).
        arch: The timm architecture name, e.g. ``"resnet18"``.
        tile_px: Tile side in pixels the model was trained on.
        tile_um: Tile side in microns (or a magnification such as ``"20x"``).
        outcome_labels: Class names in class-index order, or ``{index: name}``.
        outcome: Name of the outcome (annotation column) the model predicts.
        preprocessing: A :class:`~histobag.Preprocessing` or a dict of its fields
            (``mean``, ``std``, ``interpolation``...); default: the architecture's timm config
            (ImageNet statistics), without resizing.
        normalizer: Stain normalizer used in training: a name, ``{"method", "fit"}`` or a
            fitted normalizer object.
        model_kwargs: Extra ``timm.create_model`` arguments needed to rebuild the network
            (``num_classes`` is added from ``outcome_labels``).
        license: SPDX identifier of the weights' licence.
        description: One line describing the model.
        overwrite: Replace an existing saved model in ``path``.

    Returns:
        The folder.
    """
    from safetensors.torch import save_model as save_safetensors

    folder = Path(path)
    if (folder / CONFIG_FILE).exists() and not overwrite:
        raise ConfigError(f"{folder} already holds a saved model; pass overwrite=True.")
    labels = _labels_list(outcome_labels)
    if preprocessing is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        pre = Preprocessing(
            interpolation=cfg.get("interpolation", "bicubic"),
            mean=tuple(cfg.get("mean", Preprocessing().mean)),
            std=tuple(cfg.get("std", Preprocessing().std)),
        )
    elif isinstance(preprocessing, Preprocessing):
        pre = preprocessing
    else:
        pre = Preprocessing(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in preprocessing.items()}
        )
    kwargs = {"num_classes": len(labels), **dict(model_kwargs or {})}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_safetensors(model, str(tmp))
    config = {
        "format": _FORMAT,
        "version": _VERSION,
        "arch": arch,
        "model_kwargs": kwargs,
        "tile_px": int(tile_px),
        "tile_um": tile_um,
        "outcome": outcome,
        "outcome_labels": labels,
        "preprocessing": pre.to_dict(),
        "normalizer": _normalizer_dict(normalizer),
        "weights": WEIGHTS_FILE,
        "weights_sha256": sha256sum(folder / WEIGHTS_FILE),
        "license": license,
        "description": description,
    }
    write_json_atomic(folder / CONFIG_FILE, config)
    return folder


def read_model_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a saved model's ``config.json``.

    Raises:
        ConfigError: Missing, not JSON, or not a histobag model configuration.
    """
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"No {CONFIG_FILE} in {path}; save a model with histobag.save_model.")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file} is not valid JSON ({exc}).") from None
    problem = None
    if not isinstance(config, dict) or config.get("format") != _FORMAT:
        problem = f'expected "format": "{_FORMAT}"'
    elif config.get("version") != _VERSION:
        problem = f"version {config.get('version')!r} is not {_VERSION}"
    elif not isinstance(config.get("arch"), str):
        problem = "'arch' must be a timm architecture name"
    elif not isinstance(config.get("outcome_labels"), list):
        problem = "'outcome_labels' must be a list"
    elif not isinstance(config.get("model_kwargs", {}), dict):
        problem = "'model_kwargs' must be an object"
    if problem:
        raise ConfigError(f"{file} is not a histobag saved model: {problem}.")
    return config


def _saved_model_module(
    network: torch.nn.Module, layers: Sequence[str], pooling: str, include_logits: bool
) -> torch.nn.Module:
    """A module returning pooled layer activations, with the logits appended if asked."""
    import torch

    # Deferred with torch: listing extractors imports this module, not torch.
    from histobag.extractors.layers import LayerFeatures

    class _Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logits: torch.Tensor | None = None
            self.features = LayerFeatures(network, layers, self._postconv, pooling)

        def _postconv(self, x: torch.Tensor) -> torch.Tensor:
            trunk = network.forward_features(x)
            if include_logits:
                self.logits = network.forward_head(trunk)
            return network.forward_head(trunk, pre_logits=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.features(x)
            if include_logits:
                out = torch.cat([out, self.logits.to(out.dtype)], dim=1)
                self.logits = None
            return out

    return _Module()


class SavedModelExtractor(FeatureExtractor):
    """A feature extractor built from a saved model folder (see :func:`save_model`)."""

    def dump_config(self) -> dict[str, Any]:
        """The folder's absolute path and the build arguments (rebuilt by
        ``build_feature_extractor``, which dispatches on a saved-model folder)."""
        return {"extractor": str(self.extra["path"]), "kwargs": dict(self._config_kwargs)}

    @property
    def num_logits(self) -> int:
        """Trailing columns of each output row that are logits (0 without logits)."""
        return int(self.extra.get("num_logits", 0))

    @property
    def outcome_labels(self) -> list[str]:
        """Class names, in logit order."""
        return list(self.extra["config"]["outcome_labels"])


def saved_model_spec(path: str | os.PathLike[str]) -> ExtractorSpec:
    """The spec of a saved model folder, built like any registered extractor.

    Its factory takes ``layers``, ``pooling`` and ``include_logits`` (see
    :func:`extractor_from_saved_model`) and gives the folder's safetensors file as the build's
    default weights; its preprocessing and input size are the folder's.

    Raises:
        ConfigError: The folder is not a saved model.
    """
    folder = Path(path).expanduser().resolve()
    config = read_model_config(folder)

    def build_saved_model(
        spec: ExtractorSpec,
        *,
        layers: str | Sequence[str] | None = None,
        pooling: str = "avg",
        include_logits: bool = False,
    ) -> ModelBuild:
        return _saved_model_build(folder, config, layers, pooling, include_logits)

    pre_cfg = dict(config.get("preprocessing") or {})
    return ExtractorSpec(
        name=folder.name,
        factory=build_saved_model,
        license=str(config.get("license") or "unknown"),
        input_size=int(config["tile_px"]),
        preprocessing=Preprocessing(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in pre_cfg.items()}
        ),
        description=str(config.get("description") or f"saved {config['arch']} model"),
        weights_required=False,
        model_kwargs=("layers", "pooling", "include_logits"),
    )


def _saved_model_build(
    folder: Path,
    config: Mapping[str, Any],
    layers: str | Sequence[str] | None,
    pooling: str,
    include_logits: bool,
) -> ModelBuild:
    """The saved timm network (random weights; the builder loads the folder's file)."""
    import torch

    # Deferred with torch: listing extractors imports this module, not torch.
    from histobag.extractors.layers import normalise_layers

    timm = _require_timm()
    try:
        network = timm.create_model(config["arch"], pretrained=False, **config["model_kwargs"])
    except RuntimeError as exc:  # timm's "Unknown model"
        raise ConfigError(f"{folder}: cannot build timm architecture: {exc}") from None
    network.eval()
    names = normalise_layers(layers)
    module = _saved_model_module(network, names, pooling, include_logits)
    tile_px = int(config["tile_px"])
    with torch.inference_mode():  # the width depends on the layers, not on the weights
        width = module(torch.zeros(1, 3, tile_px, tile_px)).shape[1]
    recorded = {
        "layers": names if names != ["postconv"] else None,
        "pooling": pooling if pooling != "avg" else None,
        "include_logits": include_logits or None,
    }
    return ModelBuild(
        module=module,
        weights_target=network,
        adapt_state_dict=functools.partial(_fill_tied, network),
        num_features=int(width),
        fixed_input_size=tile_px if _fixed_size(network) else None,
        extractor_cls=SavedModelExtractor,
        default_weights=folder / config["weights"],
        recorded_kwargs={k: v for k, v in recorded.items() if v is not None},
        extra={
            "path": str(folder),
            "config": dict(config),
            "num_logits": len(config["outcome_labels"]) if include_logits else 0,
        },
    )


def extractor_from_saved_model(path: str | os.PathLike[str], **kwargs: Any) -> FeatureExtractor:
    """Build a feature extractor from a saved model folder (see :func:`save_model`).

    The same as :func:`histobag.build_feature_extractor` on the folder: it takes the same
    arguments (``weights`` defaults to the folder's own file; another safetensors file of the
    same architecture may be given), plus the saved model's own:

    Args:
        path: The saved model folder.
        **kwargs: ``weights``, ``device``, ``mixed_precision``, ``precision``, ``compile``
            and the preprocessing overrides as in :func:`histobag.build_feature_extractor`, and

            - ``layers``: module name(s) of the network whose pooled activations are
              concatenated; default ``"postconv"`` (the pooled pre-logits features);
            - ``pooling``: ``"avg"`` or ``"max"`` pooling of spatial/token activations;
            - ``include_logits``: append the classifier's logits to each feature row (the
              extractor's ``num_logits`` says how many trailing columns they are).

    Returns:
        A ``SavedModelExtractor`` (a :class:`FeatureExtractor`); its ``extra`` holds the
        folder's configuration (``extra["config"]``), e.g. the stain normalizer to apply.

    Raises:
        ConfigError: The folder is not a saved model.
        HistobagError: timm is not installed.
        WeightsError: The weights file is missing (``WeightsNotFoundError``) or unreadable.
        CheckpointMismatchError: The weights do not fit the architecture (keys, shapes or
            dtypes).
    """
    return build_extractor(saved_model_spec(path), **kwargs)


def _fill_tied(network: torch.nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` with the tensors safetensors left out because they share storage with a
    saved one (it stores shared tensors once) filled back from the network's own."""
    params = network.state_dict(keep_vars=True)
    out = dict(state_dict)
    for key, target in params.items():
        if key not in state_dict and any(
            other in state_dict and params[other].data_ptr() == target.data_ptr()
            for other in params
            if other != key
        ):
            out[key] = target.detach()
    return out


def _fixed_size(network: torch.nn.Module) -> bool:
    """Vision transformers built by timm accept only their configured input size."""
    return hasattr(network, "patch_embed")
