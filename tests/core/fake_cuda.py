"""A pretend CUDA machine for CPU-only tests: GPUs of given compute capabilities, a current
device, and ``nn.Module.to`` recording where models are sent instead of moving them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch


def _index(device: int | str | torch.device | None) -> int | None:
    if device is None or isinstance(device, int):
        return device
    return torch.device(device).index


class FakeCuda:
    """``torch.cuda`` functions for GPUs of ``capabilities`` (one ``(major, minor)`` each).

    Attributes:
        current: The current device index (``torch.cuda.current_device()``).
        set_device_calls: Every index given to ``torch.cuda.set_device``.
        moves: Every device a module was sent to with ``nn.Module.to``.
    """

    def __init__(self, capabilities: list[tuple[int, int]], current: int = 0) -> None:
        self.capabilities = capabilities
        self.current = current
        self.set_device_calls: list[int] = []
        self.moves: list[torch.device] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
        """Replace the ``torch.cuda`` functions histobag calls, and ``nn.Module.to``."""
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: len(self.capabilities))
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "set_device", self.set_device)
        monkeypatch.setattr(cuda, "device", self.device)
        monkeypatch.setattr(cuda, "get_device_capability", self.get_device_capability)
        monkeypatch.setattr(cuda, "is_bf16_supported", self.is_bf16_supported)
        monkeypatch.setattr(torch.version, "hip", None)
        real_to = torch.nn.Module.to

        def to(module: torch.nn.Module, *args, **kwargs) -> torch.nn.Module:
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
            if device is None or device.type != "cuda":
                return real_to(module, *args, **kwargs)
            self.moves.append(device)
            return module  # stays on the CPU: there is no GPU

        monkeypatch.setattr(torch.nn.Module, "to", to)
        return self

    def set_device(self, device: int | str | torch.device) -> None:
        index = _index(device)
        assert index is not None and 0 <= index < len(self.capabilities), device
        self.set_device_calls.append(index)
        self.current = index

    @contextlib.contextmanager
    def device(self, device: int | str | torch.device | None) -> Iterator[None]:
        index = _index(device)
        previous = self.current
        if index is not None:
            self.current = index
        try:
            yield
        finally:
            self.current = previous

    def get_device_capability(
        self, device: int | str | torch.device | None = None
    ) -> tuple[int, int]:
        index = _index(device)
        return self.capabilities[self.current if index is None else index]

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        """As torch's: native from compute capability 8.0, else emulated (when counted)."""
        return self.capabilities[self.current][0] >= 8 or including_emulation
