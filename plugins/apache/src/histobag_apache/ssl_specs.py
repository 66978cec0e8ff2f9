"""Specs of extractors for your own self-supervised checkpoints: DINOv2 and SimCLR runs.

The code is Apache-2.0; the weights are whatever the user trained (their licence is theirs),
so these specs carry ``Apache-2.0`` for the code and no download. Plain data: no torch or timm.
"""

from __future__ import annotations

from typing import Any

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import SpecTable

#: The code's licence; no weights to download, 224 px input by default.
TABLE = SpecTable("histobag_apache", "Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0")

#: Layouts accepted by ``simclr`` (also in the error listing them and in the docs).
SIMCLR_LAYOUTS = (
    "a plain state dict of the backbone (torchvision/timm ResNet or timm ViT names)",
    "a Lightning checkpoint {'state_dict': ..., 'hyper_parameters': ...}",
    "{'model': ...} or {'model_state_dict': ...} wrappers",
    "key prefixes module./model./encoder./backbone. (any nesting of them)",
    "lightly's nn.Sequential(*resnet.children()[:-1]) backbone (keys 0.*, 1.*, 4.* ... 7.*)",
    "projection heads dropped: projection_head.*, projector.*, head.*, fc.*",
)

# DINOv2 trains on global crops of crops.global_crops_size; tiles are resized to it.
_DINOV2_PRE = Preprocessing(resize=224, interpolation="bicubic", antialias=True)

#: name: (factory module, no Hub repository, BibTeX keys, num_features (it depends on the
#: run: the embed_dim of cfg's student.arch, the backbone's pooled width), preprocessing).
MODELS: dict[str, tuple[str, None, str | tuple[str, ...], None, Preprocessing]] = {
    "dinov2": ("dinov2", None, "oquab2024dinov2", None, _DINOV2_PRE),
    "simclr": ("simclr", None, ("chen2020simple", "rw2019timm"), None, Preprocessing()),
}

_ABOUT = {
    "dinov2": (
        "Your DINOv2 run: weights=teacher_checkpoint.pth, cfg=config.yaml (student.arch, "
        "patch_size, layerscale, ffn_layer, block_chunks, num_register_tokens, "
        "crops.global_crops_size); normalised class token of the teacher backbone. "
        "Code Apache-2.0; the weights are yours"
    ),
    "simclr": (
        "Your SimCLR run: ckpt= (or weights=) a ResNet/ViT checkpoint; backbone from "
        "hyper_parameters arch/backbone or arch=; pooled backbone features, projection "
        "head dropped. Layouts: " + "; ".join(SIMCLR_LAYOUTS) + ". Code Apache-2.0; the "
        "weights are yours"
    ),
}

#: Fields beyond the table's: where each run's weights come from, and the factory's arguments.
_OWN: dict[str, dict[str, Any]] = {
    "dinov2": {
        "tags": ("ssl", "vit", "custom-weights"),
        "checkpoint_keys": ("teacher", "model"),
        "model_kwargs": ("cfg",),
    },
    "simclr": {
        "tags": ("ssl", "custom-weights"),
        "weights_required": False,  # ckpt= loads in the factory; a missing one is an error
        "model_kwargs": ("ckpt", "arch"),
    },
}


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [
        TABLE.spec(name, *row, description=_ABOUT[name], **_OWN[name])
        for name, row in MODELS.items()
    ]
