"""``histobag demo``: sample slides → feature bags on any machine, no downloads required."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from histobag.errors import WeightsError
from histobag.extractors.registry import RANDOM_WEIGHTS, build_feature_extractor, list_extractors

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
    from histobag.data import sample_slide
    from histobag.project import Project

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
    from histobag.analysis.demo import demo_analysis

    for path in demo_analysis(project, report.outdir, project.results_dir / "analysis"):
        print(f"  {path}")

    _banner("Where everything is")
    print(f"  project:       {root / 'project.json'}")
    print(f"  bags:          {report.outdir}  (<slide>.pt + <slide>.index.npz)")
    print(f"  configuration: {report.outdir / 'bags_config.json'}")
    print(f"  run report:    {report.outdir / 'run_report.json'}")
    print(f"  weights:       {'pretrained' if pretrained else 'RANDOM (recorded in the config)'}")
    return 0 if report.ok else 1
