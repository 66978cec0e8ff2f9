"""The example extractor's network."""

from __future__ import annotations

import torch


class ColorStats(torch.nn.Module):
    """(B, 3, H, W) → (B, 6): per-channel mean, then per-channel standard deviation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Colour statistics of each image."""
        flat = x.flatten(2)
        return torch.cat([flat.mean(-1), flat.std(-1)], dim=1)


def build_colorstats(spec: object) -> torch.nn.Module:
    """Factory called by histobag when the extractor is built."""
    return ColorStats()
