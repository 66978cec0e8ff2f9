"""Specs of extractors for your own self-supervised checkpoints: DINOv2 and SimCLR runs.

The code is Apache-2.0; the weights are whatever the user trained (their licence is theirs),
so these specs carry ``Apache-2.0`` for the code and no download. Plain data: no torch or timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag_apache import citations

_APACHE_URL = "https://www.apache.org/licenses/LICENSE-2.0"

DINOV2 = """@article{oquab2024dinov2,
  title = {{DINOv2}: Learning Robust Visual Features without Supervision},
  author = {Oquab, Maxime and Darcet, Timoth{\\'e}e and Moutakanni, Th{\\'e}o and Vo, Huy V. and
            Szafraniec, Marc and Khalidov, Vasil and Fernandez, Pierre and Haziza, Daniel and
            Massa, Francisco and El-Nouby, Alaaeldin and others},
  journal = {Transactions on Machine Learning Research},
  issn = {2835-8856},
  year = {2024},
  url = {https://openreview.net/forum?id=a68SUt6zFt}
}"""

SIMCLR = """@inproceedings{chen2020simple,
  title = {A Simple Framework for Contrastive Learning of Visual Representations},
  author = {Chen, Ting and Kornblith, Simon and Norouzi, Mohammad and Hinton, Geoffrey},
  booktitle = {Proceedings of the 37th International Conference on Machine Learning},
  series = {Proceedings of Machine Learning Research},
  volume = {119},
  pages = {1597--1607},
  year = {2020}
}"""

#: Layouts accepted by ``simclr`` (also in the error listing them and in the docs).
SIMCLR_LAYOUTS = (
    "a plain state dict of the backbone (torchvision/timm ResNet or timm ViT names)",
    "a Lightning checkpoint {'state_dict': ..., 'hyper_parameters': ...}",
    "{'model': ...} or {'model_state_dict': ...} wrappers",
    "key prefixes module./model./encoder./backbone. (any nesting of them)",
    "lightly's nn.Sequential(*resnet.children()[:-1]) backbone (keys 0.*, 1.*, 4.* ... 7.*)",
    "projection heads dropped: projection_head.*, projector.*, head.*, fc.*",
)


def dinov2() -> ExtractorSpec:
    """A ViT from your own DINOv2 training run (teacher backbone)."""
    return ExtractorSpec(
        name="dinov2",
        factory="histobag_apache.dinov2:build_dinov2",
        license="Apache-2.0",
        license_url=_APACHE_URL,
        citation=DINOV2,
        num_features=None,  # embed_dim of cfg's student.arch
        input_size=224,
        # DINOv2 trains on global crops of crops.global_crops_size; tiles are resized to it.
        preprocessing=Preprocessing(resize=224, interpolation="bicubic", antialias=True),
        description=(
            "Your DINOv2 run: weights=teacher_checkpoint.pth, cfg=config.yaml (student.arch, "
            "patch_size, layerscale, ffn_layer, block_chunks, num_register_tokens, "
            "crops.global_crops_size); normalised class token of the teacher backbone. "
            "Code Apache-2.0; the weights are yours"
        ),
        tags=("ssl", "vit", "custom-weights"),
        checkpoint_keys=("teacher", "model"),
        model_kwargs=("cfg",),
    )


def simclr() -> ExtractorSpec:
    """A ResNet or ViT backbone from your own SimCLR training run."""
    return ExtractorSpec(
        name="simclr",
        factory="histobag_apache.simclr:build_simclr",
        license="Apache-2.0",
        license_url=_APACHE_URL,
        citation="\n\n".join((SIMCLR, citations.TIMM)),
        num_features=None,  # the backbone's pooled width
        input_size=224,
        preprocessing=Preprocessing(),
        description=(
            "Your SimCLR run: ckpt= (or weights=) a ResNet/ViT checkpoint; backbone from "
            "hyper_parameters arch/backbone or arch=; pooled backbone features, projection "
            "head dropped. Layouts: " + "; ".join(SIMCLR_LAYOUTS) + ". Code Apache-2.0; the "
            "weights are yours"
        ),
        tags=("ssl", "custom-weights"),
        weights_required=False,  # ckpt= loads in the factory; a missing checkpoint is an error
        model_kwargs=("ckpt", "arch"),
    )


def specs() -> list[ExtractorSpec]:
    """The models of this module."""
    return [dinov2(), simclr()]
