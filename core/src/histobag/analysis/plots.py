"""Figures for analyses, drawn with matplotlib's object API (no pyplot, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histobag.files import atomic_path
from histobag.optional import require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["box_plot_figure", "category_colors", "is_continuous", "new_figure", "save_figure"]


def new_figure(figsize: tuple[float, float] = (6, 6), dpi: int = 100) -> Figure:
    """A matplotlib Figure not tied to pyplot (safe in threads and without a display)."""
    require("matplotlib", extra="analysis", purpose="Drawing figures")
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi)


def save_figure(fig: Figure, path: str | os.PathLike[str], **kwargs: object) -> Path:
    """Save ``fig`` atomically (temporary name, then rename) and return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path


def is_continuous(values: Any) -> bool:
    """Whether labels are numbers on a scale (float dtype) rather than categories."""
    import pandas as pd

    return bool(pd.api.types.is_float_dtype(values))


def category_colors(categories: list[str]) -> dict[str, tuple[float, float, float, float]]:
    """A distinct colour per category (tab10, then tab20)."""
    colormaps = require("matplotlib", extra="analysis", purpose="Colouring categories").colormaps
    cmap = colormaps["tab10" if len(categories) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(categories)}


def box_plot_figure(
    tile_groups: Mapping[str, np.ndarray],
    slide_groups: Mapping[str, np.ndarray],
    feature: int,
    *,
    feature_name: str | None = None,
) -> Figure:
    """Tile-level and slide-level box plots of one feature, categories side by side.

    Args:
        tile_groups: category → tile activations (n, F).
        slide_groups: category → per-slide values (n_slides, F).
        feature: Column to plot.
        feature_name: Title (default ``"feature <n>"``).
    """
    fig = new_figure((8, 4), dpi=100)
    cats = list(tile_groups)
    colors = category_colors(cats)
    for k, (groups, level) in enumerate(((tile_groups, "tiles"), (slide_groups, "slides"))):
        ax = fig.add_subplot(1, 2, k + 1)
        data = [np.asarray(groups[c])[:, feature] for c in cats]
        boxes = ax.boxplot(data, patch_artist=True, showfliers=level == "slides")
        ax.set_xticks(range(1, len(cats) + 1), cats)
        for patch, c in zip(boxes["boxes"], cats):
            patch.set_facecolor(colors[c])
            patch.set_alpha(0.7)
        if level == "slides":  # few points: show each slide
            for i, values in enumerate(data, 1):
                jitter = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else [0.0]
                ax.scatter(i + np.asarray(jitter), values, s=12, color="black", zorder=3)
        ax.set_title(f"{level} (n={sum(len(d) for d in data)})")
        ax.set_ylabel("activation" if level == "tiles" else "slide value")
    fig.suptitle(feature_name or f"feature {feature}")
    fig.tight_layout()
    return fig
