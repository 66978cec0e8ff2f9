"""Which device a model runs on: the default, checking the one a user asks for, and making it
the current device of its backend.

A CUDA device is always indexed (``cuda:1``, never bare ``cuda``): torch resolves a bare
``cuda`` to whichever GPU is current *when it is used*, so a model built for one GPU could
otherwise allocate, pin memory or check its capabilities on another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from histobag.errors import ExtractorArgumentError

if TYPE_CHECKING:
    import torch

__all__ = [
    "cuda_supports_bf16",
    "default_device",
    "device_available",
    "device_index",
    "make_current",
    "on_device",
    "resolve_device",
    "with_index",
]


def default_device() -> torch.device:
    """The current CUDA GPU (indexed, e.g. ``cuda:0``) when available, then Apple MPS, else
    the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def with_index(device: torch.device) -> torch.device:
    """``device`` with its index: a bare ``cuda`` becomes ``cuda:<current device>``; other
    devices are returned unchanged."""
    import torch

    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` this machine has (the default device for ``None``);
    a bare ``"cuda"`` becomes the current GPU, indexed (``cuda:<k>``).

    Raises:
        ExtractorArgumentError: ``device`` is not a device name, or names a device this
            machine does not have (e.g. ``"cuda"`` without a GPU, ``"cuda:3"`` with two).
    """
    import torch

    if device is None:
        return default_device()
    usage = "Pass e.g. device='cuda', 'cuda:1', 'mps' or 'cpu', or leave it unset"
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ExtractorArgumentError(f"device must be a device name, not {device!r}. {usage}.")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExtractorArgumentError(f"Unknown device {device!r} ({detail}). {usage}.") from None
    if not device_available(resolved):
        raise ExtractorArgumentError(
            f"device {device!r} is not available on this machine. {usage} (the default is "
            f"{default_device()} here)."
        )
    return with_index(resolved)


def device_available(device: torch.device) -> bool:
    """Whether this machine can run a model on ``device`` (an index must exist too)."""
    import torch

    if device.type == "cpu":
        return True
    if device.type == "meta":  # holds no values: nothing to compute features on
        return False
    if device.type == "mps":
        return bool(torch.backends.mps.is_available())
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.xpu, ...
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available):
        return True  # a backend torch knows by name only: let it decide when moving there
    if not is_available():
        return False
    count = getattr(backend, "device_count", None)
    return device.index is None or not callable(count) or device.index < count()


def device_index(device: torch.device) -> int | None:
    """The CUDA GPU index of ``device`` (the current GPU for a bare ``cuda``), or None for
    any other device."""
    return with_index(device).index if device.type == "cuda" else None


def make_current(device: torch.device) -> None:
    """Make ``device`` this thread's current CUDA GPU (``torch.cuda.set_device``), so what
    follows the current GPU rather than a tensor's (new ``"cuda"`` tensors, pinned-memory
    threads, streams, capability checks) lands on it too. A no-op for other devices."""
    import torch

    index = device_index(device)
    if index is not None:
        torch.cuda.set_device(index)


@contextlib.contextmanager
def on_device(device: torch.device) -> Iterator[None]:
    """Context in which ``device`` is the current CUDA GPU (restored on exit); a no-op for
    other devices."""
    import torch

    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device):
        yield


def cuda_supports_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` computes in bfloat16 natively: compute capability 8.0 or
    newer (Ampere on), or any ROCm GPU. Older GPUs (T4, V100) only emulate it, slower than
    float16, so they do not count.

    Checked for ``device`` itself, not the current GPU.
    """
    import torch

    with on_device(device):
        # torch's own answer may count emulation too, so it must also be native
        if not torch.cuda.is_bf16_supported():
            return False
        if torch.version.hip:
            return True
        return torch.cuda.get_device_capability(device)[0] >= 8
