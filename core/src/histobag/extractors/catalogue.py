"""Names of first-party models and the pack that provides each.

Used only to turn "unknown extractor" into "install this pack" when a user asks for a model
whose pack is not installed (nothing else in core depends on which packs exist).
"""

from __future__ import annotations

_GPL = "histobag-gpl"
_NC = "histobag-noncommercial"
_APACHE = "histobag-apache"

KNOWN_ELSEWHERE: dict[str, str] = {
    "ctranspath": _GPL,
    "retccl": _GPL,
    "uni": _NC,
    "uni2-h": _NC,
    "virchow2": _NC,
    "phikon": _NC,
    "phikon-v2": _NC,
    "plip": _NC,
    "gigapath": _NC,
    "gigapath.tile": _NC,
    "gigapath-tile": _NC,
    "uni2": _NC,
    "hoptimus0": _APACHE,
    "gigapath.slide": _NC,
    "gigapath-slide": _NC,
    "virchow": _APACHE,
    "h-optimus-0": _APACHE,
    "dinov2": _APACHE,
    "simclr": _APACHE,
    "resnet18_imagenet": _APACHE,
    "resnet50_imagenet": _APACHE,
    "densenet121_imagenet": _APACHE,
    "efficientnet_b0_imagenet": _APACHE,
    "convnext_tiny_imagenet": _APACHE,
    "vit_small_patch16_224_imagenet": _APACHE,
    "vit_base_patch16_224_imagenet": _APACHE,
}
