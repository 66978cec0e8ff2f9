"""Features of one WSI or one TFRecord: what ``extractor(wsi)`` and
``extractor("x.tfrecords")`` run.

Both go through the streaming engine. They are registered into the extractors' input dispatch
table (:mod:`histobag.extractors.inputs`) when this module is imported, which ``import
histobag`` does; the engine itself (and torch) is imported only when a slide is extracted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histobag.extractors.inputs import InputHandler, register_input_handler
from histobag.tile_transforms import resolve_tile_transforms

if TYPE_CHECKING:
    import numpy as np
    import torch

    from histobag.engine import SlideResult
    from histobag.extractors.base import FeatureExtractor

__all__ = ["features_from_tfrecord", "features_from_wsi", "is_wsi"]


def features_from_wsi(
    extractor: FeatureExtractor,
    wsi: Any,
    *,
    batch_size: int = 32,
    num_workers: int | str = "auto",
    normalizer: Any = None,
    tile_transforms: Any = None,
) -> np.ma.MaskedArray:
    """Features of every tile of ``wsi`` as a masked array (rows, cols, F).

    Axis 0 is the grid row (y), axis 1 the grid column (x); positions without a feature
    (background, ROI-excluded, or removed by the grayspace/whitespace filters) are masked.
    ``tile_transforms`` are registered tile transforms (a name, ``{"name", "kwargs"}``, or a
    list of those; see :func:`histobag.tile_transforms.resolve_tile_transforms`), applied after the
    stain normalizer.
    """
    import numpy as np

    # Deferred: the engine imports torch, and this module is imported by ``import histobag``.
    from histobag.tile_readers import ExistingWSI

    result = _run_one(
        "wsi", extractor, ExistingWSI(wsi), batch_size, num_workers, normalizer, tile_transforms
    )
    rows, cols = wsi.grid.shape
    n_features = result.features.shape[1] if len(result.features) else extractor.num_features
    out = np.ma.masked_all((rows, cols, n_features), dtype=np.float32)
    if len(result.features):
        r, c = result.grid_index.T
        out[r, c] = result.features
    return out


def features_from_tfrecord(
    extractor: FeatureExtractor,
    path: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    num_workers: int | str = "auto",
    normalizer: Any = None,
    tile_transforms: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 (N, F), coords int64 (N, 2)) for every record of a TFRecord.

    Coordinates are the records' ``loc_x``, ``loc_y``: level-0 tile centres, as slideflow
    writes them. ``tile_transforms`` as for :func:`features_from_wsi`.
    """
    import numpy as np
    import torch

    # Deferred: the engine imports torch, and this module is imported by ``import histobag``.
    from histobag.tile_readers import OpenTFRecord

    opener = OpenTFRecord(str(path))
    result = _run_one(
        "tfrecord", extractor, opener, batch_size, num_workers, normalizer, tile_transforms
    )
    features = result.features
    if not len(features):
        features = np.zeros((0, extractor.num_features), dtype=np.float32)
    return torch.from_numpy(features), torch.from_numpy(result.top_left)


def _run_one(
    key: str,
    extractor: FeatureExtractor,
    opener: Any,
    batch_size: int,
    num_workers: int | str,
    normalizer: Any,
    tile_transforms: Any,
) -> SlideResult:
    """Run the engine over one tile reader and return its result (or raise its failure)."""
    # Deferred: the engine imports torch, and this module is imported by ``import histobag``.
    from histobag.engine import CollectSink, Job, run

    transforms = resolve_tile_transforms(tile_transforms)  # unknown names fail before reading
    sink = CollectSink()
    run(
        extractor,
        [Job(key, opener)],
        sink,
        batch_size=batch_size,
        num_workers=num_workers,
        normalizer=normalizer,
        tile_transforms=transforms,
    )
    return sink.single(key)


def is_wsi(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`histobag.WSI`, without importing the slide stack."""
    # A WSI exists only once its module is loaded: nothing to import to recognise one.
    module = sys.modules.get("histobag.slide.wsi")
    return module is not None and isinstance(obj, module.WSI)


def _is_tfrecord_path(obj: Any) -> bool:
    return isinstance(obj, (str, Path)) and str(obj).endswith(".tfrecords")


register_input_handler(InputHandler("a histobag.WSI", is_wsi, features_from_wsi))
register_input_handler(InputHandler("a .tfrecords path", _is_tfrecord_path, features_from_tfrecord))
