"""Specs of the ImageNet extractors: a listed few, and any other timm architecture by name.

Listing needs no timm: the listed models' facts are written down here. Other names of the form
``<timm arch>_imagenet`` are resolved on demand, which imports timm.
"""

from __future__ import annotations

from histobag import ExtractorSpec, Preprocessing
from histobag.extractors.hub import bibtex_entries

SUFFIX = "_imagenet"
FACTORY = "histobag_apache.imagenet:build_imagenet"
MODEL_KWARGS = ("tile_px", "layers", "pooling")
_TIMM_LICENSE_URL = "https://github.com/huggingface/pytorch-image-models/blob/main/LICENSE"
_HALF = (0.5, 0.5, 0.5)

# arch: (num_features, mean/std (None = ImageNet), BibTeX key of the architecture's paper)
LISTED: dict[str, tuple[int, tuple[float, float, float] | None, str]] = {
    "resnet18": (512, None, "he2016deep"),
    "resnet50": (2048, None, "he2016deep"),
    "densenet121": (1024, None, "huang2017densely"),
    "efficientnet_b0": (1280, None, "tan2019efficientnet"),
    "convnext_tiny": (768, None, "liu2022convnet"),
    "vit_small_patch16_224": (384, _HALF, "dosovitskiy2021image"),
    "vit_base_patch16_224": (768, _HALF, "dosovitskiy2021image"),
}


def imagenet_spec(
    arch: str,
    *,
    num_features: int | None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    license: str = "Apache-2.0",
    bibtex_key: str | None = None,
) -> ExtractorSpec:
    """Spec of ``<arch>_imagenet``: timm's default ImageNet weights for ``arch``; cites timm,
    after the architecture's paper if ``bibtex_key`` names it."""
    entries = bibtex_entries("histobag_apache")
    pre = Preprocessing(interpolation="bicubic")
    if mean is not None and std is not None:
        pre = pre.replace(mean=mean, std=std)
    return ExtractorSpec(
        name=arch + SUFFIX,
        factory=FACTORY,
        license=license,
        license_url=_TIMM_LICENSE_URL,
        citation="\n\n".join(entries[key] for key in (bibtex_key, "rw2019timm") if key),
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
        imagenet_spec(arch, num_features=n, mean=norm, std=norm, bibtex_key=key)
        for arch, (n, norm, key) in LISTED.items()
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
