"""Virchow and H-optimus-0 against timm built, pooled and fed as their model cards say.

Each card is written out here; :mod:`tests.parity` runs the checks (full-size layout on the meta
device, embeddings at reduced depth, preprocessing against PIL, fixed input sizes).
"""

from __future__ import annotations

import json

import torch
from timm.layers import SwiGLUPacked

from histobag_apache import hoptimus, virchow
from tests.parity import TimmCard, TimmCardChecks, cls_and_patch_mean, cls_token

# The official create_model arguments, written out independently of the pack's modules:
# Virchow's config.json model_args plus the SwiGLU MLP its card's create_model call adds, and
# the arguments of H-optimus-0's card.
VIRCHOW = {
    **json.loads(
        '{"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375, '
        '"global_pool": ""}'
    ),
    "mlp_layer": SwiGLUPacked,
    "act_layer": torch.nn.SiLU,
}
H_OPTIMUS_0 = dict(
    img_size=224, init_values=1e-5, dynamic_img_size=False, num_classes=0, global_pool="token"
)
H_OPTIMUS_NORM = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))

# Virchow's card: (B, 257, 1280) tokens, the class token ‖ the mean of the other 256.
VIRCHOW_EMBED = cls_and_patch_mean(first_patch=1)

# name: TimmCard(module, arch, kwargs, embedding, published M params, pipeline, tile px, norm),
# the pipeline as (interpolation, resize, crop); H-optimus-0's card feeds 224 px tiles as they
# are, and bicubic is what a user-requested resize uses.
CARDS = {
    "virchow": TimmCard(
        virchow,
        "vit_huge_patch14_224",
        VIRCHOW,
        VIRCHOW_EMBED,
        631,
        ("bicubic", 224, 224),
        tile_px=256,
    ),
    "h-optimus-0": TimmCard(
        hoptimus,
        "vit_giant_patch14_reg4_dinov2",
        H_OPTIMUS_0,
        cls_token,
        1135,
        ("bicubic", None, None),
        norm=H_OPTIMUS_NORM,
    ),
}


class TestFoundationCards(TimmCardChecks):
    cards = CARDS
