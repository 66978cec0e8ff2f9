"""UNI, UNI2-h, Virchow2 and the GigaPath tile encoder against timm, as their cards say.

The cards below (network, embedding, pipeline, published size) are checked by the shared
harness of :mod:`tests.parity`.
"""

from __future__ import annotations

import json

import torch
from timm.layers import SwiGLUPacked

from histobag_noncommercial import gigapath_tile, uni, uni2, virchow2
from tests.parity import TimmCard, TimmCardChecks, cls_and_patch_mean, cls_token

# The official create_model arguments, written out independently of the pack's modules: the
# model cards' code, or the model_args of the published config.json.
UNI = dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True)
UNI2_H = dict(
    img_size=224,
    patch_size=14,
    depth=24,
    num_heads=24,
    init_values=1e-5,
    embed_dim=1536,
    mlp_ratio=2.66667 * 2,
    num_classes=0,
    no_embed_class=True,
    mlp_layer=SwiGLUPacked,
    act_layer=torch.nn.SiLU,
    reg_tokens=8,
    dynamic_img_size=True,
)
# The model cards' create_model calls add the SwiGLU MLP to Virchow2's published config.json.
SWIGLU = dict(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
VIRCHOW2 = {
    **json.loads(
        '{"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4, '
        '"mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": true}'
    ),
    **SWIGLU,
}
# GigaPath's config.json: vit_giant_patch14_dinov2 with these model_args (16 px patches).
GIGAPATH = json.loads(
    '{"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40, '
    '"num_heads": 24, "init_values": 1e-05, "mlp_ratio": 5.33334, "num_classes": 0}'
)

# Virchow2's card averages output[:, 5:]: tokens 1-4 are registers.
VIRCHOW2_EMBED = cls_and_patch_mean(first_patch=5)

# name: TimmCard(module, arch, kwargs, embedding, published M params, pipeline, tile px), the
# pipeline as (interpolation, resize, crop): the UNI cards resize only; GigaPath upsamples
# 224 px tiles to 256, then crops. The PIL comparison resizes 256 px tiles where it can.
CARDS = {
    "uni": TimmCard(
        uni, "vit_large_patch16_224", UNI, cls_token, 303, ("bilinear", 224, None), tile_px=256
    ),
    "uni2-h": TimmCard(
        uni2, "vit_giant_patch14_224", UNI2_H, cls_token, 681, ("bilinear", 224, None), pil_px=256
    ),
    "virchow2": TimmCard(
        virchow2,
        "vit_huge_patch14_224",
        VIRCHOW2,
        VIRCHOW2_EMBED,
        631,
        ("bicubic", 224, 224),
        pil_px=256,
    ),
    "gigapath.tile": TimmCard(
        gigapath_tile, "vit_giant_patch14_dinov2", GIGAPATH, cls_token, 1135, ("bicubic", 256, 224)
    ),
}


class TestTimmCards(TimmCardChecks):
    cards = CARDS
