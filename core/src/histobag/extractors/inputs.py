"""What a :class:`~histobag.extractors.base.FeatureExtractor` accepts besides a tile batch.

``extractor(wsi)`` and ``extractor("x.tfrecords")`` run the streaming engine, which sits in a
layer above the extractors. So that the import arrow keeps pointing down, this layer owns a
dispatch table and the layer that can run the engine (:mod:`histobag.extraction`) registers
its handlers into it when it is imported (``import histobag`` imports it, without torch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["InputHandler", "find_input_handler", "register_input_handler"]


@dataclass(frozen=True)
class InputHandler:
    """One kind of input a feature extractor accepts.

    Attributes:
        name: What the input is, for messages (``"a histobag.WSI"``).
        accepts: Whether an object is this kind of input (cheap, imports nothing heavy).
        extract: ``extract(extractor, obj, **kwargs)`` returning the features.
    """

    name: str
    accepts: Callable[[Any], bool]
    extract: Callable[..., Any]


_HANDLERS: dict[str, InputHandler] = {}


def register_input_handler(handler: InputHandler) -> None:
    """Add (or replace, by name) a kind of input that feature extractors accept."""
    _HANDLERS[handler.name] = handler


def find_input_handler(obj: Any) -> InputHandler | None:
    """The handler accepting ``obj``, or None (then ``obj`` must be a tile batch)."""
    return next((h for h in _HANDLERS.values() if h.accepts(obj)), None)
