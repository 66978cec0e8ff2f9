"""Specs for the two smaller plugin kinds: transforms and bag writers.

Like :class:`~histobag.extractors.spec.ExtractorSpec`, they are plain data whose factory is a
``"module:attr"`` string imported only when used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from histobag.extractors.spec import import_object

#: Kinds of transform a pack can register.
TRANSFORM_KINDS = ("stain_normalizer", "tile_transform")


@dataclass(frozen=True)
class TransformSpec:
    """A stain normalizer or tile transform provided by a pack.

    Attributes:
        name: Registered name, e.g. ``"macenko"``.
        factory: ``"module:attr"`` of a class or callable building the transform.
        kind: ``"stain_normalizer"`` or ``"tile_transform"``.
        description: One line for listings.
        distribution: Providing distribution (filled in by the plugin manager).
    """

    name: str
    factory: str
    kind: str = "stain_normalizer"
    description: str = ""
    distribution: str = ""

    def load(self) -> Any:
        """Import and return the factory."""
        return import_object(self.factory, what=f"transform {self.name!r}")


@dataclass(frozen=True)
class BagWriterSpec:
    """A feature-bag file format provided by a pack.

    Attributes:
        name: Registered name used as ``writer=``, e.g. ``"h5"``.
        factory: ``"module:attr"`` of a :class:`histobag.io.bags.BagWriter` subclass.
        description: One line for listings.
        distribution: Providing distribution (filled in by the plugin manager).
    """

    name: str
    factory: str
    description: str = ""
    distribution: str = ""

    def load(self) -> Any:
        """Import and return the writer class."""
        return import_object(self.factory, what=f"bag writer {self.name!r}")
