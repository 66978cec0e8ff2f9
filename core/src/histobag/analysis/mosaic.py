"""``Mosaic``: tile images laid out on a grid over a :class:`SlideMap` (slideflow's mosaic map).

The map is divided into ``num_tiles_x`` square cells across; each cell shows the image of
one tile whose map point lies in that cell (strict), or, with ``expanded=True``, of a nearby
unused tile within ``leniency`` cell widths when the cell has none. No tile appears twice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histobag.analysis.mosaic_grid import GridAssignment, assign_grid
from histobag.analysis.plots import category_colors, is_continuous, new_figure, save_figure
from histobag.errors import HistobagError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from histobag.analysis.slidemap import SlideMap
    from histobag.analysis.tiles import TileImageSource

__all__ = ["RESOLUTIONS", "Mosaic"]

#: ``resolution`` → (figure side in inches, dpi).
RESOLUTIONS = {"low": (8.0, 100), "medium": (12.0, 150), "high": (16.0, 250)}


class Mosaic:
    """A mosaic map: representative tile images on a grid over a slide map.

    Args:
        slide_map: The :class:`SlideMap` (its ``slide``, ``loc_x``, ``loc_y`` say which tile
            each point is).
        tile_source: Where images come from (:mod:`histobag.analysis.tiles`); None draws
            the grid assignment only (each filled cell as a grey square).
        num_tiles_x: Grid cells across.
        tile_select: ``"first"``, ``"nearest"`` (to the cell centre) or ``"centroid"`` (the
            tile whose features are nearest the mean of the cell's tiles).
        expanded: Let empty cells take an unused tile within ``leniency`` cell widths.
        leniency: Expanded mode's search radius, in cell widths.
        resolution: ``"low"``, ``"medium"`` or ``"high"`` (figure size and dpi).
        borders: Frame each tile in its label's colour (when the map is labelled).

    Attributes:
        grid: The :class:`~histobag.analysis.mosaic_grid.GridAssignment` (cell → point).
        missing: Points whose image could not be read (their cells stay empty).
    """

    def __init__(
        self,
        slide_map: SlideMap,
        tile_source: TileImageSource | None = None,
        *,
        num_tiles_x: int = 50,
        tile_select: str = "nearest",
        expanded: bool = False,
        leniency: float = 1.5,
        resolution: str = "low",
        borders: bool = True,
    ) -> None:
        if resolution not in RESOLUTIONS:
            raise HistobagError(
                f"resolution must be one of {list(RESOLUTIONS)}, not {resolution!r}"
            )
        self.slide_map = slide_map
        self.tile_source = tile_source
        self.resolution = resolution
        self.borders = borders
        xy = slide_map.data[["x", "y"]].to_numpy(np.float64)
        self.grid: GridAssignment = assign_grid(
            xy,
            num_tiles_x,
            tile_select=tile_select,
            expanded=expanded,
            leniency=leniency,
            features=slide_map.features if tile_select == "centroid" else None,
        )
        self.missing: list[int] = []

    @property
    def num_tiles_x(self) -> int:
        """Cells across."""
        return self.grid.num_x

    @property
    def num_tiles_y(self) -> int:
        """Cells down."""
        return self.grid.num_y

    def _tile_px(self) -> int:
        side_in, dpi = RESOLUTIONS[self.resolution]
        return max(4, int(side_in * dpi / max(self.grid.num_x, self.grid.num_y)))

    def render(self) -> np.ndarray:
        """The mosaic as a uint8 RGB image (white background), one tile per filled cell."""
        from PIL import Image

        px = self._tile_px()
        canvas = np.full((self.grid.num_y * px, self.grid.num_x * px, 3), 255, np.uint8)
        data = self.slide_map.data
        labels = data["label"] if "label" in data.columns else None
        colors: dict[str, Any] = {}
        categorical = labels is not None and not is_continuous(labels)
        if self.borders and categorical and labels.notna().any():
            colors = category_colors(sorted(str(v) for v in labels.dropna().unique()))
        self.missing = []
        for (col, row), point in zip(self.grid.cells, self.grid.points):
            tile = self._read(int(point))
            if tile is None:
                self.missing.append(int(point))
                continue
            if tile.shape[:2] != (px, px):
                tile = np.asarray(Image.fromarray(tile).resize((px, px), Image.Resampling.BOX))
            top = (self.grid.num_y - 1 - int(row)) * px  # row 0 is the bottom of the map
            left = int(col) * px
            canvas[top : top + px, left : left + px] = tile
            label = labels.iloc[point] if labels is not None else None
            if colors and label is not None and str(label) in colors and px >= 8:
                rgb = (np.asarray(colors[str(label)][:3]) * 255).astype(np.uint8)
                b = max(1, px // 16)
                canvas[top : top + b, left : left + px] = rgb
                canvas[top + px - b : top + px, left : left + px] = rgb
                canvas[top : top + px, left : left + b] = rgb
                canvas[top : top + px, left + px - b : left + px] = rgb
        return canvas

    def _read(self, point: int) -> np.ndarray | None:
        if self.tile_source is None:
            return np.full((8, 8, 3), 160, np.uint8)
        row = self.slide_map.data.iloc[point]
        try:
            tile = self.tile_source.read(str(row["slide"]), int(row["loc_x"]), int(row["loc_y"]))
        except Exception:  # one unreadable tile leaves one empty cell, not a failed figure
            return None
        if tile is None:
            return None
        tile = np.asarray(tile)
        if tile.dtype != np.uint8 or tile.ndim != 3:
            return None
        return tile[..., :3]

    def plot(self, *, title: str | None = None) -> Figure:
        """The mosaic as a matplotlib figure (with a legend of label colours if bordered)."""
        side, dpi = RESOLUTIONS[self.resolution]
        canvas = self.render()
        aspect = canvas.shape[0] / canvas.shape[1]
        fig = new_figure((side, max(1.0, side * aspect)), dpi)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(canvas, interpolation="nearest")
        ax.set_axis_off()
        data = self.slide_map.data
        self.legend_labels: list[str] = []
        if self.borders and "label" in data.columns and data["label"].notna().any():
            labels = data["label"]
            if not is_continuous(labels):
                from matplotlib.patches import Patch

                cats = sorted(str(v) for v in labels.dropna().unique())
                colors = category_colors(cats)
                handles = [Patch(color=colors[c], label=c) for c in cats]
                legend = ax.legend(handles=handles, loc="lower right", framealpha=0.9)
                self.legend_labels = [t.get_text() for t in legend.get_texts()]
        if title:
            ax.set_title(title)
        return fig

    def save(self, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        """Render and save the mosaic image (PNG, JPEG...); returns the path."""
        return save_figure(self.plot(**kwargs), path)

    def points_table(self) -> Any:
        """DataFrame of the filled cells: ``col``, ``row``, ``point``, ``expanded``, and the
        point's ``slide``, ``loc_x``, ``loc_y``."""
        import pandas as pd

        data = self.slide_map.data.iloc[self.grid.points]
        return pd.DataFrame(
            {
                "col": self.grid.cells[:, 0],
                "row": self.grid.cells[:, 1],
                "point": self.grid.points,
                "expanded": self.grid.expanded,
                "slide": data["slide"].to_numpy(),
                "loc_x": data["loc_x"].to_numpy(),
                "loc_y": data["loc_y"].to_numpy(),
            }
        )

    def __repr__(self) -> str:
        return (
            f"Mosaic(grid={self.grid.num_x}x{self.grid.num_y}, filled={len(self.grid)}, "
            f"points={len(self.slide_map)})"
        )
