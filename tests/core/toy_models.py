"""A small network registered in-process by the core tests (no pack needed)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from histobag import ExtractorSpec, Preprocessing, register_plugin, unregister_plugin
from histobag.hookspecs import hookimpl


class ToyNet(torch.nn.Module):
    """conv → BatchNorm → ReLU → global average pool → linear, (B, 3, H, W) → (B, width)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, stride=2)
        self.bn = torch.nn.BatchNorm2d(width)
        self.fc = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


def build_toy(spec: ExtractorSpec, *, width: int = 8) -> torch.nn.Module:
    return ToyNet(width)


def toy_spec(**changes) -> ExtractorSpec:
    fields = dict(
        name="toy",
        factory="tests.core.toy_models:build_toy",
        license="MIT",
        citation="@misc{toy}",
        num_features=8,
        input_size=32,
        preprocessing=Preprocessing(center_crop=32, resize=48, interpolation="bicubic"),
        checkpoint_keys=("model", "state_dict", "teacher"),
        model_kwargs=("width",),
        aliases=("toy-alias",),
        tags=("test",),
    )
    fields.update(changes)
    return ExtractorSpec(**fields)


class SpecPlugin:
    """An in-process plugin returning the given specs."""

    def __init__(self, *specs: ExtractorSpec) -> None:
        self.specs = list(specs)

    @hookimpl
    def histobag_extractors(self) -> list[ExtractorSpec]:
        return self.specs


@contextlib.contextmanager
def registered(*specs: ExtractorSpec) -> Iterator[SpecPlugin]:
    """Register specs for the duration of a ``with`` block."""
    plugin = SpecPlugin(*specs)
    register_plugin(plugin)
    try:
        yield plugin
    finally:
        unregister_plugin(plugin)
