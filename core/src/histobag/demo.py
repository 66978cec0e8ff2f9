"""``histobag demo``: show the whole path from histology pixels to features on any machine."""

from __future__ import annotations

import warnings
from pathlib import Path

from histobag.errors import WeightsError
from histobag.extractors.registry import RANDOM_WEIGHTS, build_feature_extractor, list_extractors

TILE_PX = 224


def _banner(text: str) -> None:
    print(f"\n== {text}")


def load_extractor(name: str, tile_px: int = TILE_PX):
    """Build ``name`` with pretrained weights, or with random weights (said loudly) when the
    weights cannot be had (offline machine, gated repository)."""
    kwargs = {"tile_px": tile_px} if name.endswith("_imagenet") else {}
    try:
        return build_feature_extractor(name, **kwargs), True
    except WeightsError as exc:
        print(
            "!! WARNING: pretrained weights unavailable, using RANDOM weights. The features below "
            "show the pipeline works but mean nothing biologically.\n!! Reason: "
            + str(exc).splitlines()[0]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build_feature_extractor(name, weights=RANDOM_WEIGHTS, **kwargs), False


def run_demo(extractor: str = "resnet18_imagenet", outdir: str | Path = "histobag-demo") -> int:
    """List extractors, then extract features from tiles of scikit-image's bundled histology."""
    import numpy as np
    from skimage import data

    _banner("Installed extractors (histobag list)")
    names = list_extractors()
    print(", ".join(names) if names else "none: install a pack, e.g. pip install histobag-apache")
    if extractor not in names and not extractor.endswith("_imagenet"):
        print(f"{extractor} is not installed; nothing to run.")
        return 1

    _banner(f"Building {extractor}")
    fe, pretrained = load_extractor(extractor)
    print(fe)
    print("preprocessing:", fe.transform)

    _banner("Extracting features from bundled histology (skimage.data.immunohistochemistry)")
    image = data.immunohistochemistry()
    step = TILE_PX // 2
    tiles = np.stack(
        [
            image[y : y + TILE_PX, x : x + TILE_PX]
            for y in range(0, image.shape[0] - TILE_PX + 1, step)
            for x in range(0, image.shape[1] - TILE_PX + 1, step)
        ]
    )
    features = fe(tiles)
    print(f"tiles: {tuple(tiles.shape)} uint8 -> features: {tuple(features.shape)}", features.dtype)
    print(f"weights: {'pretrained' if pretrained else 'RANDOM'} ({fe.weights_source})")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "features.npy", features.cpu().numpy())
    print(f"saved {out / 'features.npy'}")
    return 0
