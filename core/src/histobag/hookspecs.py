"""The hooks a histobag pack implements.

A pack is a distribution with one entry point in the ``histobag`` group pointing at a module
(or object) that implements some of these hooks, each marked with :data:`hookimpl`::

    # pyproject.toml
    [project.entry-points.histobag]
    mypack = "mypack.plugin"

    # mypack/plugin.py
    from histobag import ExtractorSpec, hookimpl

    @hookimpl
    def histobag_extractors():
        return [ExtractorSpec(name="my-model", factory="mypack.models:build", license="MIT")]

Hook modules must stay light: import histobag's specs, not torch or model code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from histobag.specs import BagWriterSpec, ExtractorSpec, TransformSpec

PROJECT_NAME = "histobag"

#: Marker for hook implementations in packs.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def histobag_extractors() -> list[ExtractorSpec]:
    """Return the feature extractors this pack provides, as :class:`ExtractorSpec` objects.

    Called once per process when extractors are first listed or built. Each spec names its
    factory as a ``"module:attr"`` string, which histobag imports only when the model is built,
    so this hook must not import torch or model code. Names must be unique across all installed
    packs: a clash is an error naming both providers.
    """


@hookspec(firstresult=True)
def histobag_resolve_extractor(name: str) -> ExtractorSpec | None:
    """Return a spec for ``name`` if this pack builds a family of models by pattern.

    Called only for names that no pack lists (for example ``"<timm arch>_imagenet"``); return
    ``None`` for names the pack does not recognise. May import what it needs to decide.
    """


@hookspec
def histobag_transforms() -> list[TransformSpec]:
    """Return the stain normalizers and tile transforms this pack provides.

    Each :class:`TransformSpec` names a factory (``"module:attr"``) that builds an object with
    ``fit``, ``get_fit``, ``set_fit`` and ``transform`` (stain normalizers) or a callable on a
    uint8 (B, 3, H, W) tensor (tile transforms). Core registers Macenko, Reinhard and Vahadane
    through this hook.
    """


@hookspec
def histobag_bag_writers() -> list[BagWriterSpec]:
    """Return the feature-bag file formats this pack can write.

    Each :class:`BagWriterSpec` names a :class:`histobag.io.bag_writers.BagWriter` subclass; users
    select it with ``writer=<name>``. Core registers ``pt``, ``h5`` and ``safetensors``.
    """
