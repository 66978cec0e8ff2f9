"""H-optimus-1 (Bioptimus): timm's DINOv2 ViT-g/14 with 4 registers; embedding = CLS.

The same network as H-optimus-0 (histobag-apache), trained on more slides and published under
other terms: the model card's ``create_model`` call and ``config.json`` are those of H-optimus-0,
and the file loads strictly into it.
"""

from __future__ import annotations

from types import MappingProxyType

from histobag import ExtractorSpec
from histobag.extractors.base import ModelBuild
from histobag.extractors.vit import timm_vit_build

ARCH = "vit_giant_patch14_reg4_dinov2"

#: The published ``config.json`` plus the model card's create_model arguments.
TIMM_KWARGS = MappingProxyType(
    {
        "img_size": 224,
        "init_values": 1e-5,
        "dynamic_img_size": False,
        "global_pool": "token",
        "num_classes": 0,
    }
)


def build_h_optimus_1(spec: ExtractorSpec) -> ModelBuild:
    """H-optimus-1: 1536 features, the class token after the final norm."""
    return timm_vit_build(ARCH, TIMM_KWARGS, pooling="cls")
