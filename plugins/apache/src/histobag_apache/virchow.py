"""Virchow (Paige): timm's ViT-H/14 with SwiGLU MLPs; embedding = CLS ‖ mean of patch tokens."""

from __future__ import annotations

from types import MappingProxyType

import torch
from timm.layers import SwiGLUPacked

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import timm_vit_build

ARCH = "vit_huge_patch14_224"

#: The ``model_args`` of the published ``config.json``, then the SwiGLU MLP and its
#: activation, which the model card adds to its create_model call.
TIMM_KWARGS = MappingProxyType(
    dict(img_size=224, init_values=1e-5, num_classes=0, mlp_ratio=5.3375, global_pool="")
    | {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}
)


def build_virchow(spec: ExtractorSpec) -> ModelBuild:
    """Virchow: 2560 features, the class token ‖ the mean of the 256 patch tokens."""
    # No dynamic_img_size in the published config: the position embeddings fit 224 px only.
    return timm_vit_build(ARCH, TIMM_KWARGS, pooling="cls+mean")
