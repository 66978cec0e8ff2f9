"""The analysis part of ``histobag demo``: a UMAP plot, a mosaic map and statistics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["demo_analysis"]


def demo_analysis(
    project: Any,
    bags_dir: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    outcome: str = "label",
    num_tiles_x: int = 24,
) -> list[Path]:
    """Analyse the demo bags: UMAP plot and mosaic map labelled by ``outcome``, tile- and
    slide-level statistics and a box plot of the most different feature.

    Args:
        project: The demo :class:`histobag.Project` (slides and annotations).
        bags_dir: Its bags folder.
        outdir: Where the figures and tables go (created).
        outcome: Annotation column labelling the slides.
        num_tiles_x: Mosaic grid cells across.

    Returns:
        The files written: ``umap.png``, ``mosaic.png``, ``slide_stats.csv``,
        ``tile_stats.csv``, ``box_plot_<n>.png``.
    """
    from histobag.analysis.dataset_features import DatasetFeatures
    from histobag.analysis.mosaic import Mosaic
    from histobag.analysis.slidemap import SlideMap
    from histobag.analysis.tiles import tile_source_for

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    features = DatasetFeatures.from_bags(bags_dir)
    dataset = project.dataset(features.tile_px, features.tile_um)
    features.label_slides(dataset.labels(outcome))
    smap = SlideMap.from_features(features, umap_cache=outdir / "umap_cache.npz")
    paths = [smap.save(outdir / "umap.png", title=f"UMAP of tile features, by {outcome}")]
    mosaic = Mosaic(
        smap,
        tile_source_for(dataset, coordinates=features.coordinates),
        num_tiles_x=num_tiles_x,
        expanded=True,
    )
    paths.append(mosaic.save(outdir / "mosaic.png"))
    _, slide_stats = features.stats(outdir)
    paths += [outdir / "slide_stats.csv", outdir / "tile_stats.csv"]
    paths += features.box_plots(int(slide_stats["feature"].iloc[0]), outdir)
    return paths
