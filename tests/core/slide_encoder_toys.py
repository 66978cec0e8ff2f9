"""A small slide encoder for the slide-embedding tests: attention pooling that uses the tiles'
grid positions, so wrong coordinates change its output. The environment variable
TOYSLIDE_DELAY (seconds per slide) slows it down on purpose, without changing its
configuration."""

from __future__ import annotations

import os
import time

import torch

from histobag import ExtractorSpec, SlideInput
from histobag.extractors.base import ModelBuild
from histobag.slide_encoding import SlideEncoderExtractor
from tests.core.bag_helpers import PIXELNET, TILE_PX

IN_FEATURES, OUT_FEATURES = 12, 6


class ToySlideNet(torch.nn.Module):
    """``(1, N, 12)`` features + ``(1, N, 2)`` corners → ``(1, 6)``: gated attention over tiles
    whose keys see the tile's cell on the grid (``coords // extent_px``)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.key = torch.nn.Linear(IN_FEATURES + 2, 8)
        self.score = torch.nn.Linear(8, 1)
        self.out = torch.nn.Linear(IN_FEATURES, OUT_FEATURES)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    def forward(self, features: torch.Tensor, coords: torch.Tensor, extent_px: int) -> torch.Tensor:
        time.sleep(float(os.environ.get("TOYSLIDE_DELAY", "0")))
        cells = (coords // extent_px).to(features.dtype)
        cells = cells - cells.mean(dim=1, keepdim=True)
        keys = torch.tanh(self.key(torch.cat([features, cells / 10], dim=-1)))
        weights = self.score(keys).softmax(dim=1)
        return self.out((weights * features).sum(dim=1))


def build_toy_slide(spec: ExtractorSpec) -> ModelBuild:
    return ModelBuild(
        module=ToySlideNet(),
        num_features=OUT_FEATURES,
        extractor_cls=SlideEncoderExtractor,
        extra={"in_features": IN_FEATURES},
    )


#: Trained (so to speak) on pixelnet features of 16 px tiles at 20x.
TOYSLIDE = ExtractorSpec(
    name="toyslide",
    factory="tests.core.slide_encoder_toys:build_toy_slide",
    license="MIT",
    num_features=OUT_FEATURES,
    weights_required=False,
    kind="tile_features",
    slide_input=SlideInput(("pixelnet",), tile_px=TILE_PX, magnification=20.0),
)

#: The same network under another name: bags it makes are not pixelnet's.
OTHERNET = PIXELNET.replace(name="othernet")

#: The toy models as a plugin, for subprocesses (histobag.register_plugin(ToyPlugin())).
TOY_SPECS = (PIXELNET, OTHERNET, TOYSLIDE)
