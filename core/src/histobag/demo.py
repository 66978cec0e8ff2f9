"""``histobag demo``: sample slides → feature bags on any machine, no downloads required."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

# Through the package: without the histobag[analysis] extra the demo stops here, saying so.
from histobag.analysis import DatasetFeatures, Mosaic, SlideMap
from histobag.analysis.tiles import tile_source_for
from histobag.errors import WeightsError
from histobag.extractors.registry import RANDOM_WEIGHTS, build_feature_extractor, list_extractors
from histobag.project import Project
from histobag.slide.samples import sample_slide

TILE_PX = 224
TILE_UM = 112
SLIDES = {
    "demo-tumor-1": "tumor",
    "demo-tumor-2": "tumor",
    "demo-normal-1": "normal",
    "demo-normal-2": "normal",
}


def _banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def load_extractor(name: str, tile_px: int = TILE_PX) -> tuple[Any, bool]:
    """Build ``name`` with pretrained weights, or with random weights (said loudly) when the
    weights cannot be had (offline machine, gated repository). Returns (extractor, pretrained)."""
    kwargs = {"tile_px": tile_px} if name.endswith("_imagenet") else {}
    try:
        return build_feature_extractor(name, **kwargs), True
    except WeightsError as exc:
        print(
            "!! WARNING: pretrained weights unavailable, using RANDOM weights. The features "
            "show that the pipeline works but mean nothing biologically.\n!! Reason: "
            + str(exc).splitlines()[0],
            flush=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build_feature_extractor(name, weights=RANDOM_WEIGHTS, **kwargs), False


def make_demo_project(root: Path) -> Any:
    """A project of sample slides (two labelled classes) under ``root``, made once."""
    slides = root / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(SLIDES):
        path = slides / f"{name}.tiff"
        if not path.exists():
            sample_slide(path, size=(3072, 2304), seed=seed)
    annotations = root / "annotations.csv"
    annotations.write_text(
        "slide,label\n" + "".join(f"{n},{label}\n" for n, label in SLIDES.items())
    )
    if (root / "project.json").exists():
        return Project(root)
    return Project.create(root, slides=slides, annotations=annotations, name="histobag-demo")


def run_demo(extractor: str = "resnet18_imagenet", outdir: str | Path = "histobag-demo") -> int:
    """Make sample slides, extract a feature bag per slide, and say where everything is."""
    root = Path(outdir).resolve()
    _banner("Installed extractors (histobag list)")
    names = list_extractors()
    print(", ".join(names) if names else "none: install a pack, e.g. pip install histobag-apache")
    if extractor not in names and not extractor.endswith("_imagenet"):
        print(f"{extractor} is not installed; nothing to run.")
        return 1

    _banner(f"Sample slides (scikit-image histology on a white background) in {root / 'slides'}")
    project = make_demo_project(root)
    dataset = project.dataset(TILE_PX, TILE_UM)
    for name in dataset.slides():
        print(f"  {name}: {dataset.wsi(name)}")

    _banner(f"Building {extractor}")
    fe, pretrained = load_extractor(extractor)
    print(fe)
    print("preprocessing:", fe.transform)

    _banner("Extracting feature bags")
    report = project.generate_feature_bags(fe, dataset, progress=True)
    print(report.summary())

    _banner("Analysis: UMAP slide map, mosaic map, statistics")
    for path in demo_analysis(project, report.outdir, project.results_dir / "analysis"):
        print(f"  {path}")

    _banner("Where everything is")
    print(f"  project:       {root / 'project.json'}")
    print(f"  bags:          {report.outdir}  (<slide>.pt + <slide>.index.npz)")
    print(f"  configuration: {report.outdir / 'bags_config.json'}")
    print(f"  run report:    {report.outdir / 'run_report.json'}")
    print(f"  weights:       {'pretrained' if pretrained else 'RANDOM (recorded in the config)'}")
    return 0 if report.ok else 1


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
