"""ImageNet feature extractors built from timm architectures."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import timm
import torch

from histobag import ExtractorSpec
from histobag.errors import ExtractorArgumentError
from histobag.extractors.base import ModelBuild
from histobag.extractors.layers import LayerFeatures, normalise_layers
from histobag.specs import Preprocessing
from histobag_apache.imagenet_specs import SUFFIX


def _create(arch: str, tile_px: int) -> tuple[torch.nn.Module, bool]:
    """The timm model, sized for ``tile_px`` inputs where the architecture has a fixed input
    size; the flag says whether it has one."""
    try:
        return timm.create_model(arch, pretrained=False, img_size=tile_px), True
    except TypeError:  # convolutional networks take any size and no img_size argument
        return timm.create_model(arch, pretrained=False), False


def _checkpoint_filter(model: torch.nn.Module) -> Any:
    """Timm's own filter for its architecture (it resamples position embeddings when the
    input size differs from the pretrained one), or identity."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return None
    return lambda state_dict: filter_fn(state_dict, model)


def build_imagenet(
    spec: ExtractorSpec,
    *,
    tile_px: int,
    layers: str | Sequence[str] | None = None,
    pooling: str = "avg",
) -> ModelBuild:
    """Build ``<arch>_imagenet``: timm's ``arch`` with its default ImageNet weights.

    Args:
        spec: The extractor spec (its name gives the architecture).
        tile_px: Size of the tiles that will be fed, in pixels (the network's input size).
        layers: Module name(s) whose activations are pooled and concatenated; default
            ``"postconv"``, the pooled pre-logits features.
        pooling: ``"avg"`` or ``"max"`` pooling of 4-D activations.
    """
    if not isinstance(tile_px, int) or tile_px <= 0:
        raise ExtractorArgumentError(f"tile_px must be a positive int, not {tile_px!r}")
    arch = spec.name[: -len(SUFFIX)]
    network, fixed_size = _create(arch, tile_px)
    network.eval()

    def postconv(x: torch.Tensor) -> torch.Tensor:
        return network.forward_head(network.forward_features(x), pre_logits=True)

    module = LayerFeatures(network, normalise_layers(layers), postconv, pooling)
    with torch.inference_mode():
        num_features = module(torch.zeros(1, 3, tile_px, tile_px)).shape[1]
    cfg = network.pretrained_cfg
    preprocessing = Preprocessing(
        interpolation=cfg.get("interpolation", "bicubic"),
        mean=tuple(cfg.get("mean", spec.preprocessing.mean)),
        std=tuple(cfg.get("std", spec.preprocessing.std)),
    )
    return ModelBuild(
        module=module,
        weights_target=network,
        adapt_state_dict=_checkpoint_filter(network),
        num_features=int(num_features),
        preprocessing=preprocessing,
        fixed_input_size=tile_px if fixed_size else None,
        hub=(cfg["hf_hub_id"], "model.safetensors") if cfg.get("hf_hub_id") else None,
    )
