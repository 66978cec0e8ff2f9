"""Reading a bags folder back: one bag's arrays, and the extractor that made them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from histobag.bags.config import read_config, rebuild_from_config
from histobag.io.bag_writers import get_writer

__all__ = ["read_bag", "rebuild_extractor"]


def read_bag(
    bags_dir: str | os.PathLike[str], slide: str, writer: str | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Read one bag: (features, coords, coordinate convention).

    Args:
        bags_dir: The bags folder.
        slide: The slide's (safe) name, as in the bag's file name.
        writer: The writer that made the bag; default the one ``bags_config.json`` records.
    """
    bags_dir = Path(bags_dir)
    if writer is None:
        writer = read_config(bags_dir)["writer"]
    bag_writer = get_writer(writer, bags_dir)
    features, coords = bag_writer.read(slide)
    return np.asarray(features), np.asarray(coords), bag_writer.coordinates


def rebuild_extractor(
    path: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None
) -> tuple[Any, Any]:
    """Rebuild (extractor, normalizer) from a bags folder or its ``bags_config.json``.

    Only registered extractor and normalizer names are built; nothing written in the file is
    ever imported. A tampered or unknown configuration raises
    :class:`~histobag.errors.ConfigError`.

    Args:
        path: A bags folder, or its ``bags_config.json``.
        weights: The recorded weights file's new location if it moved (or a local copy of
            downloaded weights); its sha256 must equal the recorded one.
    """
    return rebuild_from_config(path, weights=weights)
