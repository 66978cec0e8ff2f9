"""The example pack's tile transforms: imported only when one is built (they import torch).

Each factory takes JSON-able keyword arguments and returns a callable mapping uint8
(B, 3, H, W) tiles to uint8 (B, 3, H', W') tiles on the same device, each tile on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

TileFn = Callable[[torch.Tensor], torch.Tensor]


def build_invert(channels: Sequence[int] = (0, 1, 2)) -> TileFn:
    """Invert the given channels (``255 - value``); the others are kept."""
    picked = sorted({int(c) for c in channels})
    if not all(0 <= c < 3 for c in picked):
        raise ValueError(f"channels must be among 0, 1, 2 (R, G, B), got {list(channels)}")

    def invert(tiles: torch.Tensor) -> torch.Tensor:
        out = tiles.clone()
        out[:, picked] = 255 - out[:, picked]
        return out

    return invert


def build_rot90(k: int = 1) -> TileFn:
    """Rotate each tile by ``k`` quarter turns, counter-clockwise (numpy's ``rot90``)."""
    turns = int(k) % 4

    def rotate(tiles: torch.Tensor) -> torch.Tensor:
        return torch.rot90(tiles, turns, dims=(2, 3)).contiguous()

    return rotate


def build_crop(height: int, width: int, top: int = 0, left: int = 0) -> TileFn:
    """Keep the ``height`` × ``width`` window at (``top``, ``left``) of each tile."""
    if min(height, width) < 1 or min(top, left) < 0:
        raise ValueError("height and width must be >= 1, top and left >= 0")

    def crop(tiles: torch.Tensor) -> torch.Tensor:
        if top + height > tiles.shape[2] or left + width > tiles.shape[3]:
            raise ValueError(f"the window does not fit in {tuple(tiles.shape[2:])} tiles")
        return tiles[:, :, top : top + height, left : left + width].contiguous()

    return crop
