"""Small slides and a fast extractor for the engine and bag tests."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from histobag import ExtractorSpec, Preprocessing
from histobag.io.bag_writers import BagWriter
from histobag.slide.samples import sample_slide
from tests.core.conftest import VENDOR_DIR

TILE_PX, TILE_UM = 16, 8  # small enough for unreadable.svs (16 px) to have tiles


def make_slides(folder: Path, n: int = 3, bad: bool = False) -> Path:
    """``n`` small sample slides (seeded), plus the broken vendor files if ``bad``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sample_slide(folder / f"slide-{i}.svs", size=(768, 512), seed=i, levels=2)
    if bad:
        shutil.copy(VENDOR_DIR / "unreadable.svs", folder)
        shutil.copy(VENDOR_DIR / "unopenable.tiff", folder)
    return folder


class NpzWriter(BagWriter):
    """A minimal bag writer for tests: features and coordinates in one ``<slide>.npz``."""

    name = "test-npz"

    def files(self, slide):
        return [self.outdir / f"{slide}.npz"]

    def write_files(self, slide, features, coords, geometry, paths):
        with open(paths[0], "wb") as handle:
            np.savez(handle, features=features, coords=coords)

    def read(self, slide):
        with np.load(self.files(slide)[0]) as data:
            return data["features"], data["coords"]


class PixelNet(torch.nn.Module):
    """A deterministic little network. The environment variable PIXELNET_DELAY (seconds per
    batch) slows it down on purpose, without changing its configuration."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, width, 3)
        self.fc = torch.nn.Linear(width, width)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(float(os.environ.get("PIXELNET_DELAY", "0")))
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def build_pixelnet(spec: ExtractorSpec) -> torch.nn.Module:
    return PixelNet()


PIXELNET = ExtractorSpec(
    name="pixelnet",
    factory="tests.core.bag_helpers:build_pixelnet",
    license="MIT",
    num_features=12,
    input_size=16,
    preprocessing=Preprocessing(),
    weights_required=False,
)
