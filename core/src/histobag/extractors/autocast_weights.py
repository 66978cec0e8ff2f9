"""Model weights stored once in the dtype autocast computes them in.

Under ``torch.autocast``, a linear layer or convolution casts its float32 weight and bias to
the reduced dtype on every call (autocast's cache lasts one ``with`` block, so one batch):
for a ViT-g that is gigabytes of memory traffic per batch. Stored in that dtype from the
start, they are what autocast would have made of them, bit for bit, and autocast leaves
them as they are. Everything autocast runs in float32 (normalisation layers, embeddings,
position tables, softmax) keeps its float32 parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["CAST_DEVICE_TYPES", "cast_autocast_weights", "castable_modules"]

#: Device types whose autocast runs ``linear`` and ``conv1d/2d/3d`` in its reduced dtype.
CAST_DEVICE_TYPES = ("cpu", "cuda")

#: The parameters such a module may have for its weights to be cast.
_PARAMETER_NAMES = frozenset({"weight", "bias"})


def _castable_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def castable_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of ``model`` whose float32 weight and bias autocast would cast to its
    reduced dtype on every call, so they can be cast once instead.

    A module qualifies when it is exactly ``nn.Linear`` or ``nn.Conv1d/2d/3d`` (a subclass may
    use its weight in float32 math, e.g. weight standardisation), holds only ``weight`` and
    ``bias`` parameters (hook-based weight or spectral norm hold others), has no forward
    pre-hook (which could rewrite them), and shares no parameter with a module that does not
    qualify (a tied embedding would otherwise look up reduced-precision values).

    A parent module that reads a child's weight in its own float32 arithmetic (not through a
    linear layer or convolution) would see the reduced values; no registered model does (each
    was checked to give bit-identical features).
    """
    types = _castable_types()

    def qualifies(module: torch.nn.Module) -> bool:
        return (
            type(module) in types
            and set(module._parameters) <= _PARAMETER_NAMES
            and not module._forward_pre_hooks
        )

    modules = [m for m in model.modules() if qualifies(m)]
    chosen = {id(m) for m in modules}
    elsewhere = {
        id(p) for m in model.modules() if id(m) not in chosen for p in m.parameters(recurse=False)
    }
    return [m for m in modules if not any(id(p) in elsewhere for p in m.parameters(recurse=False))]


def cast_autocast_weights(model: torch.nn.Module, dtype: torch.dtype, device_type: str) -> int:
    """Store the float32 weights and biases of :func:`castable_modules` in ``dtype``, the
    dtype ``model`` runs in under ``torch.autocast(device_type, dtype)``.

    Parameters keep their identity (only their data changes), so shared ones stay shared.
    The model must then run under autocast, as
    :class:`~histobag.extractors.base.FeatureExtractor` runs it; called on float32 inputs
    without it, these layers raise.

    Args:
        model: The model, on its device.
        dtype: ``torch.bfloat16`` or ``torch.float16``.
        device_type: The device type autocast runs on; nothing is cast for a type not in
            :data:`CAST_DEVICE_TYPES`.

    Returns:
        How many tensors were cast.
    """
    import torch

    if device_type not in CAST_DEVICE_TYPES or dtype not in (torch.bfloat16, torch.float16):
        return 0
    cast = 0
    seen: set[int] = set()
    with torch.no_grad():
        for module in castable_modules(model):
            for param in module.parameters(recurse=False):
                if id(param) in seen or param.dtype != torch.float32:
                    continue
                seen.add(id(param))
                param.data = param.data.to(dtype)  # keeps the memory format (channels-last)
                cast += 1
    return cast
