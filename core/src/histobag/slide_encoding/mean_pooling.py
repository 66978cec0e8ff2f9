"""``mean:<tile encoder>``: the mean of a slide's tile features, for any tile encoder.

The simplest slide embedding (TRIDENT's ``mean-<encoder>``), and the baseline every slide
encoder should beat. It has no weights; the mean is taken in float64 and rounded once to
float32, so it equals ``features.mean(axis=0, dtype=np.float64)`` as float32 exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from histobag.extractors.base import ModelBuild
from histobag.slide_encoding.extractor import SlideEncoderExtractor
from histobag.specs import ExtractorSpec

__all__ = ["MeanPooling", "build_mean_pooling"]


class MeanPooling(nn.Module):
    """``(1, N, D) -> (1, D)``: the mean over tiles; coordinates are ignored."""

    def forward(self, features: torch.Tensor, coords: torch.Tensor, extent_px: int) -> torch.Tensor:
        """The mean tile feature (float64 accumulation where the device has it)."""
        wide = torch.float32 if features.device.type == "mps" else torch.float64
        return features.to(wide).mean(dim=1).to(features.dtype)


def build_mean_pooling(spec: ExtractorSpec) -> ModelBuild:
    """Factory of every ``mean:<tile encoder>`` spec."""
    return ModelBuild(
        module=MeanPooling(),
        num_features=spec.num_features,
        extractor_cls=SlideEncoderExtractor,
        extra={"in_features": spec.num_features},
    )
