"""Which device a model runs on: the default, and checking the one a user asks for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from histobag.errors import ExtractorArgumentError

if TYPE_CHECKING:
    import torch

__all__ = ["default_device", "device_available", "resolve_device"]


def default_device() -> torch.device:
    """CUDA when available, then Apple MPS, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` this machine has (the default device for ``None``).

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
    return resolved


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
