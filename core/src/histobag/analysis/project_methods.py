"""Project-level analyses (slideflow's ``Project.generate_features`` / ``generate_mosaic``).

Written as functions of a :class:`histobag.Project` so that ``Project`` stays a thin
folder-and-settings class; they are attached as methods there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from histobag.analysis import require_extra
from histobag.analysis.dataset_features import DatasetFeatures
from histobag.analysis.mosaic import Mosaic
from histobag.analysis.slidemap import SlideMap
from histobag.analysis.tiles import tile_source_for
from histobag.errors import ConfigError, HistobagError
from histobag.extractors.saved import is_saved_model, read_model_config
from histobag.naming import safe_name

__all__ = ["MOSAIC_KWARGS", "generate_features", "generate_mosaic", "restrict_features"]

#: Keyword arguments of :func:`generate_mosaic` that go to :class:`Mosaic` (the others go to
#: :meth:`SlideMap.from_features`).
MOSAIC_KWARGS = ("num_tiles_x", "tile_select", "expanded", "leniency", "resolution", "borders")


def generate_features(
    project: Any,
    model: Any,
    dataset: Any = None,
    *,
    outcomes: str | None = None,
    **kwargs: Any,
) -> DatasetFeatures:
    """Features of every tile of a dataset of the project, in memory.

    Args:
        project: The :class:`histobag.Project`.
        model: A saved model folder, a registered extractor name, or a built extractor.
        dataset: Slides at one tile size; default (saved models only) the project's slides at
            the model's tile size.
        outcomes: Annotation column to label slides by (for statistics and plots).
        **kwargs: :class:`DatasetFeatures` arguments (``layers``, ``batch_size``,
            ``max_tiles``, ``normalizer``, ``annotations``...).
    """
    if dataset is None:
        if not (isinstance(model, (str, os.PathLike)) and is_saved_model(model)):
            raise ConfigError(
                "generate_features needs a dataset for a pretrained extractor, e.g. "
                "P.generate_features('resnet18_imagenet', P.dataset(224, 112))."
            )
        config = read_model_config(model)
        dataset = project.dataset(config["tile_px"], config["tile_um"])
    if outcomes is not None and kwargs.get("annotations") is None:
        kwargs["annotations"] = dataset.labels(outcomes)
    return DatasetFeatures(model, dataset, **kwargs)


def restrict_features(
    features: DatasetFeatures, slides: Sequence[str] | None = None, tiles: Any = None
) -> DatasetFeatures:
    """A shallow copy of ``features`` limited to ``slides`` and, per slide, to the tiles
    where ``tiles(slide) -> bool mask`` is True."""
    out = object.__new__(type(features))
    out.__dict__.update(features.__dict__)
    keep = list(features.slides) if slides is None else [s for s in features.slides if s in slides]
    out.activations, out.locations, out.logits = {}, {}, {}
    for slide in keep:
        mask = np.ones(len(features.activations[slide]), bool) if tiles is None else tiles(slide)
        if not mask.any():
            continue
        out.activations[slide] = features.activations[slide][mask]
        out.locations[slide] = features.locations[slide][mask]
        if slide in features.logits:
            out.logits[slide] = features.logits[slide][mask]
    out._results = {}
    return out


def generate_mosaic(
    project: Any,
    df: Any,
    dataset: Any = None,
    *,
    filters: dict[str, Any] | None = None,
    filter_blank: str | Sequence[str] | None = None,
    outcomes: str | None = None,
    map_slide: str | None = None,
    show_prediction: int | str | None = None,
    restrict_pred: Sequence[int] | None = None,
    predict_on_axes: tuple[int, int] | None = None,
    max_tiles: int = 0,
    umap_cache: str | os.PathLike[str] | None = None,
    use_float: bool = False,
    low_memory: bool = False,
    **kwargs: Any,
) -> Mosaic:
    """A mosaic map of the project's tiles from their features (slideflow's signature).

    Args:
        project: The :class:`histobag.Project`.
        df: A :class:`DatasetFeatures`, or a bags folder (read with ``from_bags``).
        dataset: Slides to include and read tile images from; default the project's slides at
            the features' tile size.
        filters: Extra dataset filters ``{column: [values]}``.
        filter_blank: Columns that must not be blank.
        outcomes: Annotation column to label (and frame) tiles by.
        map_slide: ``None``, ``"centroid"`` or ``"average"`` (see :meth:`SlideMap.from_features`).
        show_prediction: Label tiles by the logit of this class (index, or outcome label).
        restrict_pred: Keep only tiles whose predicted class (argmax of logits) is in this list.
        predict_on_axes: ``(i, j)``: place tiles by logits i and j instead of UMAP.
        max_tiles: If > 0, at most this many tiles per slide.
        umap_cache: ``.npz`` file to reuse or store the UMAP coordinates.
        use_float: ``outcomes`` is continuous (colour scale instead of categories).
        low_memory: Low-memory UMAP.
        **kwargs: :class:`Mosaic` arguments (``num_tiles_x``, ``tile_select``, ``expanded``,
            ``leniency``, ``resolution``, ``borders``) and UMAP arguments (``n_neighbors``,
            ``min_dist``, ``metric``, ``n_epochs``...).
    """
    require_extra("Project.generate_mosaic")
    if isinstance(df, (str, os.PathLike)):
        df = DatasetFeatures.from_bags(df)
    if dataset is None:
        if df.tile_px is None or df.tile_um is None:
            raise ConfigError("Pass dataset=: the features do not record their tile size.")
        dataset = project.dataset(df.tile_px, df.tile_um)
    if filters or filter_blank:
        dataset = dataset.filter(filters, filter_blank)
    wanted = {safe_name(s) for s in dataset.slides()}
    tiles = None
    if restrict_pred is not None:
        if not df.logits:
            raise HistobagError("restrict_pred needs logits (features of a trained model).")
        allowed = np.asarray(list(restrict_pred))

        def tiles(slide: str) -> np.ndarray:
            return np.isin(df.logits[slide].argmax(axis=1), allowed)

    features = restrict_features(df, sorted(wanted), tiles)
    if not features.slides:
        raise HistobagError("No slides left to map: check the dataset, filters and features.")
    mosaic_kwargs = {k: kwargs.pop(k) for k in MOSAIC_KWARGS if k in kwargs}
    smap = SlideMap.from_features(
        features,
        map_slide,
        umap_cache=umap_cache,
        predict_on_axes=predict_on_axes,
        max_tiles=max_tiles,
        low_memory=low_memory,
        **kwargs,
    )
    if outcomes is not None:
        labels, unique = dataset.labels(outcomes, use_float=use_float)
        if use_float:
            values = {safe_name(s): float(v) for s, v in labels.items()}
            smap.label(smap.data["slide"].map(values).astype(float).to_numpy())
        else:
            smap.label_by_slide((labels, unique))
    if show_prediction is not None:
        index = show_prediction
        if isinstance(index, str):
            names = list(getattr(df, "outcome_labels", []) or [])
            if index not in names:
                raise HistobagError(f"show_prediction={index!r} is not one of {names}.")
            index = names.index(index)
        smap.label_by_preds(int(index))
    source = tile_source_for(
        dataset, coordinates=features.coordinates, tile_px=df.tile_px, tile_um=df.tile_um
    )
    return Mosaic(smap, source, **mosaic_kwargs)
