"""Core's own plugin: the stain normalizers and bag writers that ship with histobag.

It is registered like any pack, so core's components and a third party's are listed the same
way. Core registers no extractors: named models live in packs.
"""

from __future__ import annotations

from histobag.hookspecs import hookimpl
from histobag.specs import BagWriterSpec, TransformSpec


@hookimpl
def histobag_transforms() -> list[TransformSpec]:
    """Macenko, Reinhard (and its tissue-masked variant) and Vahadane, as torch ops."""
    from histobag.norm import BUILTIN_NORMALIZERS

    return [
        TransformSpec(name, target, description=text) for name, target, text in BUILTIN_NORMALIZERS
    ]


@hookimpl
def histobag_bag_writers() -> list[BagWriterSpec]:
    """``pt`` (slideflow), ``h5`` (CLAM/TRIDENT) and ``safetensors`` bag formats."""
    return [
        BagWriterSpec(
            "pt",
            "histobag.io.bags:PtBagWriter",
            description="<slide>.pt float32 (N, F) + <slide>.index.npz (slideflow)",
        ),
        BagWriterSpec(
            "h5",
            "histobag.io.bags:H5BagWriter",
            description="<slide>.h5 with features and coords (CLAM/TRIDENT)",
        ),
        BagWriterSpec(
            "safetensors",
            "histobag.io.bags:SafetensorsBagWriter",
            description="<slide>.safetensors with features and coords",
        ),
    ]
