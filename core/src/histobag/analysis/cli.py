"""``histobag mosaic | umap | stats``: analyses of a bags folder from the command line.

:func:`add_commands` registers the subcommands on the main parser's subparsers. The parser is
built for every command (``histobag list`` too), so this module stays light: the analysis
modules (pandas, torch, slides) are imported inside the handlers. ``umap`` and ``mosaic``
check for the ``histobag[analysis]`` extra before reading anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from histobag.analysis import MAP_MODULES, require_extra
from histobag.errors import ConfigError

__all__ = ["add_commands", "cmd_mosaic", "cmd_stats", "cmd_umap"]


def _umap_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--map-slide", choices=("centroid", "average"), help="one point per slide")
    p.add_argument("--max-tiles", type=int, default=0, help="at most this many tiles per slide")
    p.add_argument("--n-neighbors", type=int, default=50)
    p.add_argument("--min-dist", type=float, default=0.1)
    p.add_argument("--metric", default="cosine")
    p.add_argument("--n-epochs", type=int, help="UMAP epochs (default: umap-learn's)")
    p.add_argument("--low-memory", action="store_true", help="low-memory UMAP")
    p.add_argument("--umap-cache", help=".npz file to reuse/store the UMAP coordinates")


def _label_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--annotations", required=required, help="CSV with a 'slide' column")
    p.add_argument(
        "--label", "--outcome", dest="label", required=required, help="annotation column"
    )


def add_commands(subparsers: Any) -> None:
    """Add the ``mosaic``, ``umap`` and ``stats`` subcommands to ``subparsers``."""
    p = subparsers.add_parser("umap", help="UMAP plot of the tiles of a bags folder")
    p.add_argument("--bags", required=True, help="bags folder (with bags_config.json)")
    p.add_argument("--project", help="project folder (its annotations label the slides)")
    _label_options(p)
    p.add_argument("--out", default="umap.png", help="image to write")
    p.add_argument("--coords", help="also write the map's points (.npz or .parquet)")
    _umap_options(p)
    p.set_defaults(func=cmd_umap)

    p = subparsers.add_parser("mosaic", help="mosaic map of tile images over a UMAP")
    p.add_argument("--bags", required=True, help="bags folder (with bags_config.json)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--project", help="project folder (slides, TFRecords, annotations)")
    where.add_argument("--slides", help="folder of slides")
    _label_options(p)
    p.add_argument("--out", default="mosaic.png", help="image to write")
    p.add_argument("--num-tiles-x", type=int, default=50)
    p.add_argument("--tile-select", default="nearest", choices=("first", "nearest", "centroid"))
    p.add_argument("--expanded", action="store_true", help="fill empty cells with nearby tiles")
    p.add_argument("--leniency", type=float, default=1.5, help="expanded search, in cells")
    p.add_argument("--resolution", default="low", choices=("low", "medium", "high"))
    _umap_options(p)
    p.set_defaults(func=cmd_mosaic)

    p = subparsers.add_parser("stats", help="per-feature tests across outcome categories")
    p.add_argument("--bags", required=True, help="bags folder (with bags_config.json)")
    _label_options(p, required=True)
    p.add_argument("--outdir", required=True, help="where tile_stats.csv etc. go")
    p.add_argument("--method", default="mean", choices=("mean", "threshold"))
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--test", default="anova", choices=("anova", "kruskal"))
    p.add_argument("--box-plots", type=int, default=0, help="box plots of the N top features")
    p.set_defaults(func=cmd_stats)


def _labels(annotations: str | None, label: str | None, project: str | None = None) -> Any:
    """``(labels, unique)`` from a CSV (or a project's annotations), or None."""
    if label is None:
        return None
    from histobag.dataset import Dataset  # heavy (slides): only when the command runs

    if annotations is None and project is not None:
        from histobag.project import Project  # heavy (slides): only when a project is named

        annotations = Project(project).annotations
    if annotations is None:
        raise ConfigError("--label needs --annotations CSV (or a project with annotations).")
    return Dataset(None, annotations, filter_blank=[label]).labels(label)


def _umap_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        max_tiles=args.max_tiles,
        n_neighbors=args.n_neighbors,
        min_dist=args.min_dist,
        metric=args.metric,
        n_epochs=args.n_epochs,
        low_memory=args.low_memory,
        umap_cache=args.umap_cache,
    )


def cmd_umap(args: argparse.Namespace) -> int:
    """Write a UMAP plot of a bags folder, labelled by an annotation column."""
    require_extra("histobag umap", MAP_MODULES)
    # heavy (pandas, torch): imported when the command runs, not when the parser is built
    from histobag.analysis.dataset_features import DatasetFeatures
    from histobag.analysis.slidemap import SlideMap

    labels = _labels(args.annotations, args.label, args.project)
    dsf = DatasetFeatures.from_bags(args.bags, annotations=labels)
    smap = SlideMap.from_features(dsf, args.map_slide, **_umap_kwargs(args))
    path = smap.save(args.out, title=args.label)
    print(f"UMAP of {len(smap)} points from {len(dsf.slides)} slides -> {path}")
    if args.coords:
        print(f"points -> {smap.save_coords(args.coords)}")
    return 0


def cmd_mosaic(args: argparse.Namespace) -> int:
    """Write a mosaic map of a bags folder, tile images from the project or slides."""
    require_extra("histobag mosaic", MAP_MODULES)
    # heavy (pandas, torch, slides): imported when the command runs, not when the parser is built
    from histobag.analysis.dataset_features import DatasetFeatures
    from histobag.analysis.mosaic import Mosaic
    from histobag.analysis.slidemap import SlideMap
    from histobag.analysis.tiles import tile_source_for
    from histobag.dataset import Dataset

    labels = _labels(args.annotations, args.label, args.project)
    dsf = DatasetFeatures.from_bags(args.bags, annotations=labels)
    if args.project:
        from histobag.project import Project  # heavy (slides): only when a project is named

        dataset = Project(args.project).dataset(dsf.tile_px, dsf.tile_um)
    else:
        dataset = Dataset(args.slides, None, dsf.tile_px, dsf.tile_um)
    smap = SlideMap.from_features(dsf, args.map_slide, **_umap_kwargs(args))
    source = tile_source_for(dataset, coordinates=dsf.coordinates)
    mosaic = Mosaic(
        smap,
        source,
        num_tiles_x=args.num_tiles_x,
        tile_select=args.tile_select,
        expanded=args.expanded,
        leniency=args.leniency,
        resolution=args.resolution,
    )
    path = mosaic.save(args.out)
    print(f"mosaic {mosaic.num_tiles_x}x{mosaic.num_tiles_y}, {len(mosaic.grid)} tiles -> {path}")
    if mosaic.missing:
        print(f"{len(mosaic.missing)} tile image(s) could not be read; their cells are empty.")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """Write tile- and slide-level statistics (and optional box plots) of a bags folder."""
    if args.box_plots > 0:
        require_extra("histobag stats --box-plots", ("matplotlib",))
    # heavy (pandas, torch): imported when the command runs, not when the parser is built
    from histobag.analysis.dataset_features import DatasetFeatures

    dsf = DatasetFeatures.from_bags(args.bags, annotations=_labels(args.annotations, args.label))
    _, slide_df = dsf.stats(
        args.outdir, method=args.method, test=args.test, threshold=args.threshold
    )
    outdir = Path(args.outdir)
    significant = int((slide_df["p_fdr"] < 0.05).sum())
    print(
        f"{len(slide_df)} features; {significant} differ between categories at slide level "
        f"(FDR < 0.05) -> {outdir / 'slide_stats.csv'}, {outdir / 'tile_stats.csv'}"
    )
    if args.box_plots > 0:
        top = [int(f) for f in slide_df["feature"].head(args.box_plots)]
        paths = dsf.box_plots(top, outdir / "box_plots", method=args.method)
        print(f"{len(paths)} box plots -> {outdir / 'box_plots'}")
    return 0
