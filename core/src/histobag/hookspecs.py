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

histobag calls every hook through pluggy (``pm.hook.<name>()``), so pluggy's rules apply, as
in pytest: implementations run last-registered first, ``@hookimpl(tryfirst=True)`` or
``trylast=True`` move one to the front or the back, ``@hookimpl(wrapper=True)`` wraps the
others and may change their result, and a ``firstresult`` hook stops at the first non-``None``
answer. An exception raised by a pack's hook (or by importing the pack) does not escape: it is
reported as a failure of that pack (``histobag list --debug``,
:func:`histobag.plugin_failures`) and the other packs keep working. The specs a hook returns
are stamped with the pack's distribution and version; a name two packs both register is used
by neither and reported naming both. ``HISTOBAG_DISABLE_PACKS=dist1,dist2`` switches installed
packs off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from histobag.specs import (
        BagWriterSpec,
        ExtractorSpec,
        SlideReaderSpec,
        TissueDetectorSpec,
        TransformSpec,
    )

PROJECT_NAME = "histobag"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations in packs: ``@hookimpl`` on each hook function."""
hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def histobag_extractors() -> list[ExtractorSpec]:
    """Return the feature extractors this pack provides.

    Called when extractors are first listed or built in a process (and again after a plugin is
    registered or unregistered). Each spec names its factory as a ``"module:attr"`` string,
    which histobag imports only when the model is built, so this hook must not import torch or
    model code. Names and aliases must be unique across all installed packs: a name two packs
    register is used by neither, and building it raises ``DuplicateExtractorError`` naming both.

    Returns:
        The pack's :class:`~histobag.specs.ExtractorSpec` objects (an empty list for none).
        ``distribution`` and ``version`` may be left empty: histobag fills them in from the
        pack's metadata.
    """


@hookspec(firstresult=True)
def histobag_resolve_extractor(name: str) -> ExtractorSpec | None:
    """Return a spec for ``name`` if this pack builds a family of models by pattern.

    Called only for names that no pack lists (for example ``"<timm arch>_imagenet"``), in
    pluggy's order (last registered first; ``tryfirst=True`` goes first). May import what it
    needs to decide.

    Stops at first non-None result.

    Args:
        name: The name the user asked for, as typed (match case-insensitively if the family's
            names are).

    Returns:
        An :class:`~histobag.specs.ExtractorSpec` whose ``name`` is ``name``, or ``None`` for a
        name this pack does not recognise (the next pack is asked).
    """


@hookspec
def histobag_transforms() -> list[TransformSpec]:
    """Return the stain normalizers and tile transforms this pack provides.

    Each :class:`TransformSpec` names a factory (``"module:attr"``) and its ``kind``:

    - ``"stain_normalizer"``: ``factory()`` or ``factory(fit)`` builds an object with ``fit``,
      ``get_fit``, ``set_fit`` and ``transform``; users select one with ``normalizer=<name>``.
      Core registers Macenko, Reinhard and Vahadane this way.
    - ``"tile_transform"``: ``factory(**kwargs)`` is called with the user's keyword arguments
      (JSON-able: they are recorded in ``bags_config.json`` and the transform is rebuilt from
      them) and returns a callable mapping a uint8 (B, 3, H, W) tensor on the model's device to
      a uint8 (B, 3, H', W') tensor on the same device. It must be deterministic, each tile's
      output independent of the others in the batch (so of the batch size). Users select
      tile transforms with ``tile_transforms=[...]``; the engine applies them in order after
      the stain normalizer and before the extractor's preprocessing, and fails a slide whose
      transform returns anything else, naming the transform.

    Returns:
        The pack's :class:`~histobag.specs.TransformSpec` objects (names unique across packs).
    """


@hookspec
def histobag_bag_writers() -> list[BagWriterSpec]:
    """Return the feature-bag file formats this pack can write.

    Called when bag writers are first listed or used in a process. Core registers ``pt``,
    ``h5`` and ``safetensors``; names must be unique across installed packs.

    Returns:
        The pack's :class:`~histobag.specs.BagWriterSpec` objects, each naming a
        :class:`histobag.io.bag_writers.BagWriter` subclass (``"module:attr"``, imported only
        when used); users select one with ``writer=<name>``.
    """


@hookspec
def histobag_slide_readers() -> list[SlideReaderSpec]:
    """Return the slide readers (slide formats, remote storage) this pack provides.

    ``WSI(path, reader="auto")`` tries, highest ``priority`` first, every reader whose
    suffixes or URL schemes claim the path, and uses the first that opens it; ``reader=NAME``
    uses that one. Core registers ``openslide`` (priority 0). Like every hook, this one must
    not import the reader's library: the factory is imported when a slide is opened.

    Returns:
        The pack's :class:`~histobag.specs.SlideReaderSpec` objects (names unique across
        packs).
    """


@hookspec
def histobag_tissue_detectors() -> list[TissueDetectorSpec]:
    """Return the tissue detectors this pack provides, selected with ``tissue=<name>``.

    Core registers ``otsu`` (Otsu on the thumbnail's HSV saturation) and ``hsv`` (saturation
    and brightness thresholds with pen-mark rejection and morphological clean-up). A
    deep-learning segmenter can be registered the same way, loading its weights when built.

    Returns:
        The pack's :class:`~histobag.specs.TissueDetectorSpec` objects.
    """
