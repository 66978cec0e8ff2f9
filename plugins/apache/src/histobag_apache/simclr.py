"""Backbones from your own SimCLR training runs (ResNet or ViT), run as timm models.

``build_feature_extractor("simclr", ckpt="last.ckpt")`` (or ``weights=``) loads the backbone
of a SimCLR checkpoint and returns its pooled features (a ResNet's global average pool, a
ViT's class token after the final norm); the projection head is dropped.

The architecture is a timm model name (torchvision's ResNet names are the same in timm, e.g.
``resnet18``, ``resnet50``, ``wide_resnet50_2``; ViTs such as ``vit_small_patch16_224``). It
comes from ``arch=``, else from the checkpoint: ``hyper_parameters['arch']`` or
``hyper_parameters['backbone']`` (Lightning), or a top-level ``'arch'``.

Accepted checkpoint layouts:

- a plain state dict of the backbone, with torchvision/timm ResNet or timm ViT names;
- a Lightning checkpoint ``{'state_dict': ..., 'hyper_parameters': ...}``, or the wrappers
  ``{'model': ...}``, ``{'model_state_dict': ...}``, ``{'state_dict': ..., 'arch': ...}``;
- key prefixes ``module.``, ``model.``, ``encoder.``, ``backbone.`` in any nesting;
- lightly's ``nn.Sequential(*list(resnet.children())[:-1])`` backbone (keys ``0.*``
  (conv1), ``1.*`` (bn1), ``4.*`` ... ``7.*`` (layer1..layer4));
- projection heads, dropped: ``projection_head.*``, ``projector.*``, ``head.*``, ``fc.*``.

Anything else is refused with an error listing these layouts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import timm
import torch
from torch import nn

from histobag import ExtractorSpec
from histobag.errors import ExtractorArgumentError, WeightsError
from histobag.extractors import weights as wt
from histobag.extractors.base import FeatureExtractor, ModelBuild
from histobag_apache.checkpoint_keys import strip_prefixes
from histobag_apache.ssl_specs import SIMCLR_LAYOUTS

#: Prefixes of wrappers around the backbone, stripped in any order and nesting.
WRAPPER_PREFIXES = ("module.", "model.", "encoder.", "backbone.")
#: Prefixes of projection heads (and classifiers), dropped.
HEAD_PREFIXES = ("projection_head.", "projector.", "head.", "fc.")
#: Keys of dicts wrapping the state dict.
STATE_KEYS = ("state_dict", "model_state_dict", "model")
#: lightly's Sequential(*resnet.children()[:-1]) index → torchvision name.
LIGHTLY_RESNET = {
    "0": "conv1",
    "1": "bn1",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}

_MAX_SHOWN = 6


def layouts_help() -> str:
    """The accepted layouts, one per line."""
    return "Accepted SimCLR checkpoint layouts:\n" + "\n".join(f"  - {x}" for x in SIMCLR_LAYOUTS)


def split_checkpoint(checkpoint: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(state dict, architecture recorded in the checkpoint or None)."""
    arch = None
    hparams = checkpoint.get("hyper_parameters") or checkpoint.get("hparams")
    if isinstance(hparams, Mapping):
        arch = hparams.get("arch") or hparams.get("backbone")
    if arch is None and isinstance(checkpoint.get("arch"), str):
        arch = checkpoint["arch"]
    state: Mapping[str, Any] = checkpoint
    for key in STATE_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            state = checkpoint[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors, str(arch) if isinstance(arch, str) else None


def backbone_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """Strip wrapper prefixes, drop projection heads, rename lightly's Sequential indices."""
    out = {}
    for key, value in state.items():
        key = strip_prefixes(key, WRAPPER_PREFIXES)
        if key.startswith(HEAD_PREFIXES):
            continue
        match = re.match(r"^(\d+)\.", key)
        if match and match.group(1) in LIGHTLY_RESNET:
            key = LIGHTLY_RESNET[match.group(1)] + key[match.end() - 1 :]
        out[key] = value
    return out


def create_backbone(arch: str) -> nn.Module:
    """The timm model ``arch`` without classifier (pooled features), random weights."""
    if not timm.is_model(arch):
        raise ExtractorArgumentError(
            f"Unknown backbone architecture {arch!r}: pass arch= a timm model name such as "
            "'resnet50' or 'vit_small_patch16_224'."
        )
    return timm.create_model(arch, pretrained=False, num_classes=0).eval()


class Backbone(nn.Module):
    """Holds the backbone once its architecture is known (possibly only from the checkpoint)."""

    def __init__(self) -> None:
        super().__init__()
        self.arch: str | None = None
        self.net: nn.Module | None = None

    def build(self, arch: str) -> nn.Module:
        """Create the network for ``arch`` (once)."""
        if self.arch != arch:
            self.net, self.arch = create_backbone(arch), arch
        return self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, F)."""
        return self.net(x)


def _check_keys(net: nn.Module, state: Mapping[str, Any], arch: str) -> None:
    """Raise a WeightsError with the accepted layouts if the keys do not fit ``net``."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if not (missing or unexpected or shapes):
        return
    parts = [
        f"{title} ({len(keys)}): {', '.join(keys[:_MAX_SHOWN])}" + (" ..." if len(keys) > 6 else "")
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if keys
    ]
    raise WeightsError(
        f"This checkpoint does not hold a {arch} backbone in a known SimCLR layout; after "
        "removing wrappers and heads: " + "; ".join(parts) + ". Is arch= right?\n" + layouts_help()
    )


class SimCLRExtractor(FeatureExtractor):
    """Checks that the backbone got weights from exactly one of ``ckpt=`` and ``weights=``."""

    def __init__(self, spec: ExtractorSpec, build: ModelBuild, *args: Any, **kwargs: Any):
        ckpt = build.extra.get("ckpt")
        source = kwargs.get("weights_source")
        if ckpt is not None and source not in ("none", None):
            raise ExtractorArgumentError(
                "simclr: pass the checkpoint as ckpt= or weights=, not both"
            )
        if ckpt is None and source in ("none", None):
            raise ExtractorArgumentError(
                "simclr needs a checkpoint: build_feature_extractor('simclr', ckpt='last.ckpt') "
                "(or weights=...); weights='random' with arch= gives an untrained backbone.\n"
                + layouts_help()
            )
        if build.module.net is None:
            raise ExtractorArgumentError(
                "simclr with weights='random' needs arch= (e.g. 'resnet50')"
            )
        if ckpt is not None:
            kwargs["weights_sha256"], kwargs["weights_source"] = build.extra["ckpt_sha256"], ckpt
        super().__init__(spec, build, *args, **kwargs)


def build_simclr(
    spec: ExtractorSpec,
    *,
    ckpt: str | os.PathLike[str] | None = None,
    arch: str | None = None,
) -> ModelBuild:
    """Factory of ``simclr``: see the module docstring for ``ckpt``/``weights`` and ``arch``."""
    holder = Backbone()
    build = ModelBuild(module=holder, extractor_cls=SimCLRExtractor)

    def adapt(checkpoint: dict[str, Any]) -> dict[str, Any]:
        state, recorded = split_checkpoint(checkpoint)
        name = arch or recorded
        if name is None:
            raise ExtractorArgumentError(
                "The checkpoint does not record its backbone (no hyper_parameters 'arch' or "
                "'backbone'): pass arch=, e.g. build_feature_extractor('simclr', ckpt=..., "
                "arch='resnet50')."
            )
        net = holder.build(name)
        state = backbone_keys(state)
        _check_keys(net, state, name)
        _describe(build, holder)
        return {f"net.{k}": v for k, v in state.items()}

    build.adapt_state_dict = adapt
    if arch is not None:
        holder.build(arch)
        _describe(build, holder)
    if ckpt is not None:
        path = str(ckpt)
        state = adapt(wt.read_checkpoint(path))
        wt.load_strict(holder, state, source=path, model=spec.name)
        build.extra.update(ckpt=path, ckpt_sha256=wt.sha256sum(path))
    return build


def _describe(build: ModelBuild, holder: Backbone) -> None:
    """Record the backbone's feature width and fixed input size on ``build``."""
    net = holder.net
    build.num_features = int(net.num_features)
    size = getattr(getattr(net, "patch_embed", None), "img_size", None)
    fixed = size is not None and not getattr(net, "dynamic_img_size", False)
    build.fixed_input_size = int(size[0]) if fixed else None
