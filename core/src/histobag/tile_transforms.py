"""Tile transforms: the ``tile_transform`` kind of the ``histobag_transforms`` hook.

A pack registers a :class:`~histobag.specs.TransformSpec` of kind ``tile_transform`` whose
factory, called with JSON-able keyword arguments, returns a callable mapping uint8
(B, 3, H, W) tiles on the model's device to uint8 (B, 3, H', W') on the same device. The engine
applies the requested transforms in order after the stain normalizer and before the
extractor's preprocessing; ``bags_config.json`` records them as ``{"name", "kwargs"}`` so that
:func:`histobag.bags.config.build_tile_transforms` rebuilds them.

Importing this module imports no torch (``histobag verify`` and the CLI read configurations).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from histobag.errors import ArgumentError, HistobagError, PluginError, TileTransformError
from histobag.plugins import transform_specs

if TYPE_CHECKING:
    import torch

__all__ = ["TileTransform", "apply_tile_transforms", "resolve_tile_transforms"]


@dataclass(frozen=True, eq=False)
class TileTransform:
    """A built tile transform: what ``bags_config.json`` records, and the callable.

    Calling it applies the callable and checks its output (:func:`apply_tile_transforms`).

    Attributes:
        name: The registered name (``TransformSpec.name`` of kind ``tile_transform``).
        kwargs: The JSON-able keyword arguments its factory was called with.
        fn: What the factory returned: uint8 (B, 3, H, W) → uint8 (B, 3, H', W'), same device.
        distribution: The pack that registered it.
    """

    name: str
    kwargs: dict[str, Any]
    fn: Callable[[torch.Tensor], torch.Tensor]
    distribution: str = ""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """The transformed batch, checked against the contract."""
        return apply_tile_transforms(batch, (self,))

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., "kwargs": {...}}``, as recorded in ``bags_config.json``."""
        return {"name": self.name, "kwargs": json.loads(json.dumps(self.kwargs))}

    def label(self) -> str:
        """``'name' (pack)`` for messages."""
        return f"{self.name!r}" + (f" ({self.distribution})" if self.distribution else "")


def apply_tile_transforms(
    batch: torch.Tensor, tile_transforms: Sequence[TileTransform]
) -> torch.Tensor:
    """Apply tile transforms in order to a uint8 (B, 3, H, W) batch, checking each output.

    Raises:
        TileTransformError: A transform raised, or its output is not a uint8 tensor
            (B, 3, H', W') with the same B, on the device of its input; names the transform.
    """
    import torch

    for transform in tile_transforms:
        try:
            with torch.inference_mode():
                out = transform.fn(batch)
        except Exception as exc:
            raise TileTransformError(
                f"tile transform {transform.label()} raised {type(exc).__name__}: {exc}"
            ) from exc
        problem = _tile_transform_problem(batch, out)
        if problem:
            raise TileTransformError(
                f"tile transform {transform.label()} returned {problem}; a tile transform must "
                f"return a uint8 (B, 3, H', W') tensor with B = {len(batch)} on {batch.device}."
            )
        batch = out
    return batch


def _tile_transform_problem(batch: torch.Tensor, out: Any) -> str | None:
    """What is wrong with a tile transform's output, or None."""
    import torch

    if not isinstance(out, torch.Tensor):
        return f"a {type(out).__name__}, not a tensor"
    what = f"a {str(out.dtype).removeprefix('torch.')} tensor {tuple(out.shape)} on {out.device}"
    if (
        out.dtype != torch.uint8
        or out.ndim != 4
        or out.shape[0] != batch.shape[0]
        or out.shape[1] != 3
        or 0 in out.shape[2:]
        or out.device != batch.device
    ):
        return what
    return None


def resolve_tile_transforms(request: Any) -> list[TileTransform]:
    """Build the tile transforms a user asked for, in order.

    Args:
        request: ``None`` (none), a registered name, ``{"name": ..., "kwargs": {...}}``, a
            built :class:`TileTransform`, or a list of those, e.g.
            ``["example-invert", {"name": "example-rot90", "kwargs": {"k": 2}}]``.

    Raises:
        ArgumentError: An entry is malformed, names no registered tile transform (the message
            lists those registered), has keyword arguments that are not JSON-able, or has ones
            its factory refuses. Checked before any slide is opened.
        PluginError: A factory failed otherwise, or did not return a callable.
    """
    if request is None:
        return []
    entries = list(request) if isinstance(request, (list, tuple)) else [request]
    return [_resolve_one(entry) for entry in entries]


_KEYS = {"name", "kwargs"}  # of a tile transform's record


def _resolve_one(entry: Any) -> TileTransform:
    if isinstance(entry, TileTransform):
        return entry
    if isinstance(entry, str):
        name, kwargs = entry, {}
    elif isinstance(entry, dict) and isinstance(entry.get("name"), str) and set(entry) <= _KEYS:
        name, kwargs = entry["name"], entry.get("kwargs") or {}
    else:
        raise ArgumentError(
            "tile_transforms takes registered names or {'name': ..., 'kwargs': {...}} "
            f"(or a list of those), got {entry!r}. To use your own function, register it as "
            "a tile transform (a TransformSpec of kind 'tile_transform'), so that the bags "
            "record it and it can be rebuilt."
        )
    specs = {n: s for n, s in transform_specs().items() if s.kind == "tile_transform"}
    if name not in specs:
        registered = ", ".join(sorted(specs)) or "none (no installed pack provides one)"
        hint = (
            f" {name!r} is a stain normalizer: pass it as normalizer={name!r}."
            if name in transform_specs()
            else ""
        )
        raise ArgumentError(
            f"unknown tile transform {name!r}; registered tile transforms: {registered}.{hint}"
        )
    spec = specs[name]
    kwargs = _json_kwargs(name, kwargs)
    label = f"{name!r}" + (f" ({spec.distribution})" if spec.distribution else "")
    try:
        fn = spec.load()(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(
            f"tile transform {label} refuses the keyword arguments {json.dumps(kwargs)}: {exc}"
        ) from exc
    except HistobagError:
        raise
    except Exception as exc:
        raise PluginError(
            f"tile transform {label} could not be built: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(fn):
        raise PluginError(
            f"the factory of tile transform {label} returned a {type(fn).__name__}, not a "
            "callable on uint8 (B, 3, H, W) tensors."
        )
    return TileTransform(name, kwargs, fn, spec.distribution)


def _json_kwargs(name: str, kwargs: Any) -> dict[str, Any]:
    """``kwargs`` as they read back from ``bags_config.json`` (what the factory gets)."""
    problem = None
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        problem = "they must be a dict with string keys"
    else:
        try:
            return dict(json.loads(json.dumps(kwargs, allow_nan=False)))
        except (TypeError, ValueError) as exc:
            problem = str(exc)
    raise ArgumentError(
        f"the keyword arguments of tile transform {name!r} must be JSON-able (they are "
        f"recorded in bags_config.json): {problem}; got {kwargs!r}."
    )
