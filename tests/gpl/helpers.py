"""Helpers of the histobag-gpl tests: the authors' preprocessing."""

from __future__ import annotations

import numpy as np
import torch
from torchvision import transforms

from histobag.specs import IMAGENET_MEAN, IMAGENET_STD


def reference_batch(tiles: np.ndarray) -> torch.Tensor:
    """The authors' preprocessing: torchvision ToTensor + Normalize(ImageNet), tile by tile."""
    pipeline = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    return torch.stack([pipeline(tile) for tile in tiles])
