"""Specs of the ImageNet extractors: a listed few, and any other timm architecture by name.

Listing needs no timm: the listed models' facts are written down here. Other names of the form
``<timm arch>_imagenet`` are resolved on demand, which imports timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag_apache import citations

SUFFIX = "_imagenet"
FACTORY = "histobag_apache.imagenet:build_imagenet"
MODEL_KWARGS = ("tile_px", "layers", "pooling")
_TIMM_LICENSE_URL = "https://github.com/huggingface/pytorch-image-models/blob/main/LICENSE"
_HALF = (0.5, 0.5, 0.5)

# arch: (num_features, mean/std (None = ImageNet), architecture citation)
LISTED: dict[str, tuple[int, tuple[float, float, float] | None, str]] = {
    "resnet18": (512, None, citations.RESNET),
    "resnet50": (2048, None, citations.RESNET),
    "densenet121": (1024, None, citations.DENSENET),
    "efficientnet_b0": (1280, None, citations.EFFICIENTNET),
    "convnext_tiny": (768, None, citations.CONVNEXT),
    "vit_small_patch16_224": (384, _HALF, citations.VIT),
    "vit_base_patch16_224": (768, _HALF, citations.VIT),
}


def imagenet_spec(
    arch: str,
    *,
    num_features: int | None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    license: str = "Apache-2.0",
    citation: str = "",
) -> ExtractorSpec:
    """Spec of ``<arch>_imagenet``: timm's default ImageNet weights for ``arch``."""
    pre = Preprocessing(interpolation="bicubic")
    if mean is not None and std is not None:
        pre = pre.replace(mean=mean, std=std)
    return ExtractorSpec(
        name=arch + SUFFIX,
        factory=FACTORY,
        license=license,
        license_url=_TIMM_LICENSE_URL,
        citation="\n\n".join(c for c in (citation, citations.TIMM) if c),
        num_features=num_features,
        input_size=224,
        preprocessing=pre,
        description=f"timm {arch} with its default ImageNet weights; pooled pre-logits",
        tags=("imagenet",),
        weights_required=True,
        model_kwargs=MODEL_KWARGS,
        required_kwargs=("tile_px",),
    )


def listed_specs() -> list[ExtractorSpec]:
    """Specs of the ImageNet models shown by ``histobag list``."""
    return [
        imagenet_spec(arch, num_features=n, mean=norm, std=norm, citation=cite)
        for arch, (n, norm, cite) in LISTED.items()
    ]


def resolve(name: str) -> ExtractorSpec | None:
    """Spec for ``<any timm architecture>_imagenet``, or None if timm has no such model."""
    if not name.endswith(SUFFIX):
        return None
    arch = name[: -len(SUFFIX)]
    import timm

    if not timm.is_model(arch):
        return None
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        return None
    license = (
        "Apache-2.0"
        if (cfg.license or "").lower() == "apache-2.0"
        else (cfg.license or "NOASSERTION")
    )
    return imagenet_spec(
        arch, num_features=None, mean=tuple(cfg.mean), std=tuple(cfg.std), license=license
    )
