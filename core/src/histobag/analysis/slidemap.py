"""``SlideMap``: tiles (or slides) placed in 2-D by UMAP of their features, or by predictions.

umap-learn (and numba behind it) is imported only when an embedding is computed. A fitted
embedding can be reused through ``umap_cache=``: the coordinates and a hash of the input are
stored in an ``.npz`` file; the UMAP object itself is never pickled (DESIGN principle 4).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histobag.analysis.plots import category_colors, is_continuous, new_figure, save_figure
from histobag.analysis.stats import normalise_labels
from histobag.errors import HistobagError
from histobag.files import atomic_path
from histobag.geometry import evenly_spaced
from histobag.optional import require

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = ["MAP_SLIDE", "SlideMap", "umap_embedding"]

#: Values of ``map_slide``: map every tile, each slide's centroid tile, or each slide's mean.
MAP_SLIDE = (None, "centroid", "average")
_UMAP_DEFAULTS: dict[str, Any] = {"n_neighbors": 50, "min_dist": 0.1, "metric": "cosine"}


def _input_hash(features: np.ndarray, params: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(str(features.shape).encode())
    digest.update(np.ascontiguousarray(features, dtype=np.float32).tobytes())
    return digest.hexdigest()


def umap_embedding(
    features: np.ndarray,
    *,
    n_neighbors: int = 50,
    min_dist: float = 0.1,
    metric: str = "cosine",
    low_memory: bool = False,
    random_state: int | None = 42,
    n_epochs: int | None = None,
    umap_cache: str | os.PathLike[str] | None = None,
    **umap_kwargs: Any,
) -> np.ndarray:
    """2-D UMAP coordinates (n, 2) of ``features`` (n, F).

    Args:
        features: One row per point.
        n_neighbors: UMAP neighbourhood size (slideflow's default, 50).
        min_dist: UMAP minimum distance between embedded points.
        metric: Distance between feature vectors (``"cosine"``, ``"euclidean"``...).
        low_memory: umap-learn's ``low_memory`` nearest-neighbour search (slower, much less
            memory); the input is also kept as float32.
        random_state: Seed (reproducible, single-threaded); ``None`` for parallel and
            non-deterministic.
        n_epochs: Optimisation epochs (umap-learn's default when None).
        umap_cache: An ``.npz`` file: reused when it was made from the same features and
            parameters, else (re)written.
        **umap_kwargs: Other ``umap.UMAP`` arguments.
    """
    features = np.asarray(features, dtype=np.float32)
    params = dict(
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        metric=metric,
        random_state=random_state,
        n_epochs=n_epochs,
        **umap_kwargs,
    )
    key = _input_hash(features, params) if umap_cache is not None else ""
    if umap_cache is not None and Path(umap_cache).is_file():
        try:
            with np.load(umap_cache, allow_pickle=False) as cached:
                if str(cached["hash"]) == key:
                    return np.asarray(cached["coords"], dtype=np.float32)
        except (OSError, KeyError, ValueError):
            pass  # a damaged or foreign cache is recomputed and overwritten
        warnings.warn(
            f"{umap_cache} was made from other features or parameters; recomputing it.",
            UserWarning,
            stacklevel=2,
        )
    n = len(features)
    if n < 5:  # UMAP's spectral layout needs a handful of points; use PCA for tiny inputs
        coords = _pca2(features)
    else:
        umap = require("umap", extra="analysis", purpose="A UMAP slide map")
        reducer = umap.UMAP(
            n_neighbors=min(n_neighbors, n - 1),
            min_dist=min_dist,
            metric=metric,
            n_components=2,
            low_memory=low_memory,
            random_state=random_state,
            n_epochs=n_epochs,
            **umap_kwargs,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state" and friends
            coords = reducer.fit_transform(features)
    coords = np.asarray(coords, dtype=np.float32)
    if umap_cache is not None:
        with atomic_path(Path(umap_cache)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, coords=coords, hash=np.asarray(key))
    return coords


def _pca2(features: np.ndarray) -> np.ndarray:
    centred = features - features.mean(axis=0, keepdims=True)
    if len(features) < 2:
        return np.zeros((len(features), 2), np.float32)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    out = np.zeros((len(features), 2), np.float32)
    k = min(2, len(s))
    out[:, :k] = u[:, :k] * s[:k]
    return out


def _from_frame(df: pd.DataFrame) -> dict[str, Any]:
    """Arrays from a tile table: wide (``feature_<i>`` columns, as ``DatasetFeatures.to_df``)
    or slideflow-like (one ``activations`` array column)."""
    if "slide" not in df.columns:
        raise HistobagError("The table needs a 'slide' column (one row per tile).")
    wide = [c for c in df.columns if str(c).startswith("feature_")]
    if wide:
        features = df[wide].to_numpy(np.float32)
    elif "activations" in df.columns:
        features = np.stack(df["activations"].to_numpy()).astype(np.float32)
    else:
        raise HistobagError("The table needs feature_<i> columns or an 'activations' column.")
    logit_cols = [c for c in df.columns if str(c).startswith("logit_")]
    logits = df[logit_cols].to_numpy(np.float32) if logit_cols else None
    if logits is None and "logits" in df.columns:
        logits = np.stack(df["logits"].to_numpy()).astype(np.float32)
    slides = df["slide"].astype(str).to_numpy()
    if {"x", "y"} <= set(df.columns):
        locs = df[["x", "y"]].to_numpy(np.int64)
    elif "location" in df.columns:
        locs = np.stack(df["location"].to_numpy()).astype(np.int64)
    else:
        locs = np.full((len(df), 2), -1, np.int64)
    return {
        "slides": slides,
        "locations": locs,
        "features": features,
        "logits": logits,
        "tile": _index_within(slides),
        "coordinates": df.attrs.get("coordinates", "top_left"),
        "tile_px": df.attrs.get("tile_px"),
        "tile_um": df.attrs.get("tile_um"),
        "labels": dict(zip(slides, df["label"])) if "label" in df.columns else {},
    }


def _index_within(slides: np.ndarray) -> np.ndarray:
    """Position of each row among the rows of its slide."""
    out = np.zeros(len(slides), np.int64)
    counters: dict[str, int] = {}
    for i, s in enumerate(slides):
        out[i] = counters.get(s, 0)
        counters[s] = out[i] + 1
    return out


def _from_dataset_features(dsf: Any) -> dict[str, Any]:
    slides = [s for s in dsf.slides if len(dsf.activations[s])]
    if not slides:
        raise HistobagError("No tiles to map (no slides with features).")
    counts = [len(dsf.activations[s]) for s in slides]
    logits = None
    if getattr(dsf, "logits", None):
        logits = np.concatenate([dsf.logits[s] for s in slides]).astype(np.float32)
    return {
        "slides": np.repeat(np.asarray(slides, dtype=str), counts),
        "locations": np.concatenate([dsf.locations[s] for s in slides]).astype(np.int64),
        "features": np.concatenate([dsf.activations[s] for s in slides]).astype(np.float32),
        "logits": logits,
        "tile": np.concatenate([np.arange(c) for c in counts]).astype(np.int64),
        "coordinates": getattr(dsf, "coordinates", "top_left"),
        "tile_px": getattr(dsf, "tile_px", None),
        "tile_um": getattr(dsf, "tile_um", None),
        "labels": dict(getattr(dsf, "labels", {}) or {}),
    }


def _subsample(arrays: dict[str, Any], max_tiles: int) -> dict[str, Any]:
    """At most ``max_tiles`` rows per slide, evenly spaced (deterministic)."""
    slides = arrays["slides"]
    keep = []
    for s in dict.fromkeys(slides):
        rows = np.flatnonzero(slides == s)
        keep.append(rows[evenly_spaced(len(rows), max_tiles)])
    idx = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return _take(arrays, idx)


def _take(arrays: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    out = dict(arrays)
    for key in ("slides", "locations", "features", "logits", "tile"):
        if out.get(key) is not None:
            out[key] = out[key][idx]
    return out


def _per_slide(arrays: dict[str, Any], how: str) -> dict[str, Any]:
    """One point per slide: its centroid tile (nearest its mean feature vector), mapped by
    that tile's features (``centroid``) or by the mean (``average``)."""
    slides = arrays["slides"]
    rows, means = [], []
    for s in dict.fromkeys(slides):
        idx = np.flatnonzero(slides == s)
        feats = arrays["features"][idx]
        mean = feats.mean(axis=0)
        rows.append(idx[int(np.argmin(((feats - mean) ** 2).sum(axis=1)))])
        means.append(mean)
    out = _take(arrays, np.asarray(rows, np.int64))
    if how == "average":
        out["features"] = np.asarray(means, np.float32)
        if arrays.get("logits") is not None:
            out["logits"] = np.stack(
                [arrays["logits"][slides == s].mean(axis=0) for s in dict.fromkeys(slides)]
            )
    return out


class SlideMap:
    """Points in 2-D, one per tile (or per slide), with their slide, location and label.

    Make one with :meth:`from_features` (UMAP, or two predictions on the axes) or
    :meth:`load`. :attr:`data` is a DataFrame with columns ``x``, ``y`` (map coordinates),
    ``slide``, ``loc_x``, ``loc_y`` (level-0 tile location, see :attr:`coordinates`),
    ``tile`` (row of the tile in its slide's features) and, once labelled, ``label``.

    Attributes:
        data: The points.
        features: (n, F) features of the points (None after :meth:`load`).
        logits: (n, n_classes) logits of the points, if known.
        coordinates: ``"top_left"`` or ``"centre"``: convention of ``loc_x``, ``loc_y``.
        tile_px, tile_um: Tile size of the features (for reading tile images).
    """

    def __init__(
        self,
        data: pd.DataFrame,
        *,
        features: np.ndarray | None = None,
        logits: np.ndarray | None = None,
        coordinates: str = "top_left",
        tile_px: int | None = None,
        tile_um: float | str | None = None,
    ) -> None:
        self.data = data.reset_index(drop=True)
        self.features = features
        self.logits = logits
        self.coordinates = coordinates
        self.tile_px = tile_px
        self.tile_um = tile_um
        self.legend_labels: list[str] = []

    # ---------------------------------------------------------------- building

    @classmethod
    def from_features(
        cls,
        source: Any,
        map_slide: str | None = None,
        *,
        umap_cache: str | os.PathLike[str] | None = None,
        predict_on_axes: tuple[int, int] | None = None,
        max_tiles: int = 0,
        low_memory: bool = False,
        n_neighbors: int = 50,
        min_dist: float = 0.1,
        metric: str = "cosine",
        random_state: int | None = 42,
        n_epochs: int | None = None,
        **umap_kwargs: Any,
    ) -> SlideMap:
        """Map tiles (or slides) of a :class:`DatasetFeatures` or a tile table.

        Args:
            source: A :class:`~histobag.analysis.DatasetFeatures`, or a DataFrame with one
                row per tile (``DatasetFeatures.to_df()`` layout, or slideflow's with an
                ``activations`` array column).
            map_slide: ``None`` maps every tile; ``"centroid"`` maps each slide's centroid
                tile (the tile nearest its mean feature vector); ``"average"`` maps each
                slide's mean feature vector.
            umap_cache: ``.npz`` file to reuse the embedding from (see :func:`umap_embedding`).
            predict_on_axes: ``(i, j)``: place points at logits ``i`` and ``j`` instead of UMAP.
            max_tiles: If > 0, at most this many tiles per slide (evenly spaced).
            low_memory: Low-memory UMAP.
            n_neighbors: UMAP neighbourhood size.
            min_dist: UMAP minimum distance.
            metric: UMAP metric.
            random_state: UMAP seed (None: parallel, not reproducible).
            n_epochs: UMAP optimisation epochs (default: umap-learn's).
            **umap_kwargs: Other ``umap.UMAP`` arguments.
        """
        import pandas as pd

        if map_slide not in MAP_SLIDE:
            raise HistobagError(
                f"map_slide must be None, 'centroid' or 'average', not {map_slide!r}"
            )
        arrays = (
            _from_frame(source)
            if isinstance(source, pd.DataFrame)
            else _from_dataset_features(source)
        )
        if not len(arrays["slides"]):
            raise HistobagError("No tiles to map (no slides with features).")
        if max_tiles > 0:
            arrays = _subsample(arrays, max_tiles)
        if map_slide is not None:
            arrays = _per_slide(arrays, map_slide)
        if predict_on_axes is not None:
            logits = arrays.get("logits")
            if logits is None:
                raise HistobagError(
                    "predict_on_axes needs logits: make the features with a trained (saved) model."
                )
            i, j = predict_on_axes
            coords = np.stack([logits[:, i], logits[:, j]], axis=1).astype(np.float32)
        else:
            coords = umap_embedding(
                arrays["features"],
                n_neighbors=n_neighbors,
                min_dist=min_dist,
                metric=metric,
                low_memory=low_memory,
                random_state=random_state,
                n_epochs=n_epochs,
                umap_cache=umap_cache,
                **umap_kwargs,
            )
        data = pd.DataFrame(
            {
                "x": coords[:, 0],
                "y": coords[:, 1],
                "slide": arrays["slides"],
                "loc_x": arrays["locations"][:, 0],
                "loc_y": arrays["locations"][:, 1],
                "tile": arrays["tile"],
            }
        )
        smap = cls(
            data,
            features=arrays["features"],
            logits=arrays.get("logits"),
            coordinates=arrays["coordinates"],
            tile_px=arrays["tile_px"],
            tile_um=arrays["tile_um"],
        )
        if arrays["labels"]:
            smap.label_by_slide(arrays["labels"])
        return smap

    def __len__(self) -> int:
        """Number of points."""
        return len(self.data)

    # ---------------------------------------------------------------- labels

    def label_by_slide(self, labels: Any) -> SlideMap:
        """Label points by their slide's label (dict slide → label, or ``(labels, unique)``
        from ``Dataset.labels``); unlabelled slides get no label. Returns self."""
        names = normalise_labels(labels)
        self.data["label"] = self.data["slide"].map(names)
        return self

    def label_by_preds(self, index: int) -> SlideMap:
        """Label points by their logit for class ``index`` (a continuous colour scale)."""
        if self.logits is None:
            raise HistobagError("label_by_preds needs logits (features of a trained model).")
        self.data["label"] = self.logits[:, int(index)].astype(float)
        return self

    def label(self, values: Sequence[Any] | np.ndarray) -> SlideMap:
        """Label the points with one value per point (categories or numbers)."""
        if len(values) != len(self):
            raise HistobagError(f"{len(values)} labels for {len(self)} points")
        self.data["label"] = list(values)
        return self

    # ---------------------------------------------------------------- figures

    def plot(
        self,
        *,
        title: str | None = None,
        s: float | None = None,
        subsample: int | None = None,
        figsize: tuple[float, float] = (7, 6),
        dpi: int = 100,
        legend: bool = True,
    ) -> Figure:
        """Scatter plot of the map, coloured by label, with a legend (or colour bar).

        Args:
            title: Figure title.
            s: Marker size (default from the number of points).
            subsample: Plot at most this many points (random, seeded).
            figsize: Figure size in inches.
            dpi: Dots per inch.
            legend: Draw the legend / colour bar.
        """
        data = self.data
        if subsample and len(data) > subsample:
            rows = np.random.default_rng(0).choice(len(data), subsample, replace=False)
            data = data.iloc[np.sort(rows)]
        size = s if s is not None else float(np.clip(3000 / max(len(data), 1), 2, 60))
        fig = new_figure(figsize, dpi)
        ax = fig.add_subplot(1, 1, 1)
        labels = data["label"] if "label" in data.columns else None
        self.legend_labels = []
        if labels is not None and labels.notna().any() and is_continuous(labels):
            points = ax.scatter(
                data["x"], data["y"], c=labels.astype(float), s=size, cmap="viridis"
            )
            if legend:
                fig.colorbar(points, ax=ax, label="prediction")
        elif labels is not None and labels.notna().any():
            cats = sorted(str(v) for v in labels.dropna().unique())
            colors = category_colors(cats)
            for cat in cats:
                mask = (labels.astype(str) == cat).to_numpy() & labels.notna().to_numpy()
                ax.scatter(data["x"][mask], data["y"][mask], s=size, color=colors[cat], label=cat)
            if labels.isna().any():
                mask = labels.isna().to_numpy()
                ax.scatter(
                    data["x"][mask], data["y"][mask], s=size, color="lightgray", label="unlabelled"
                )
            if legend:
                handles = ax.legend(loc="best", markerscale=max(1.0, 20 / size), frameon=True)
                self.legend_labels = [t.get_text() for t in handles.get_texts()]
        else:
            ax.scatter(data["x"], data["y"], s=size, color="tab:blue")
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        if title:
            ax.set_title(title)
        fig.tight_layout()
        return fig

    def save(self, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        """Save :meth:`plot` (keyword arguments go there) as an image; returns the path.
        The legend's texts are then in :attr:`legend_labels`."""
        return save_figure(self.plot(**kwargs), path)

    def plot_3d(
        self,
        feature: int,
        *,
        subsample: int | None = None,
        figsize: tuple[float, float] = (7, 6),
        dpi: int = 100,
        title: str | None = None,
    ) -> Figure:
        """3-D scatter: x, y from the map, z the value of ``feature``, coloured by label."""
        if self.features is None:
            raise HistobagError("This map has no features (loaded from coordinates).")
        rows = np.arange(len(self))
        if subsample and len(rows) > subsample:
            rows = np.sort(np.random.default_rng(0).choice(len(rows), subsample, replace=False))
        data = self.data.iloc[rows]
        z = self.features[rows, int(feature)]
        fig = new_figure(figsize, dpi)
        ax = fig.add_subplot(1, 1, 1, projection="3d")
        labels = data["label"] if "label" in data.columns else None
        if labels is not None and labels.notna().any() and not is_continuous(labels):
            cats = sorted(str(v) for v in labels.dropna().unique())
            colors = category_colors(cats)
            for cat in cats:
                mask = (labels.astype(str) == cat).to_numpy() & labels.notna().to_numpy()
                ax.scatter(
                    data["x"][mask], data["y"][mask], z[mask], s=6, color=colors[cat], label=cat
                )
            ax.legend(loc="upper left")
        else:
            color = labels.astype(float) if labels is not None and labels.notna().any() else z
            ax.scatter(data["x"], data["y"], z, s=6, c=color, cmap="viridis")
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        ax.set_zlabel(f"feature {feature}")
        ax.set_title(title or f"feature {feature}")
        return fig

    def save_3d_plot(self, path: str | os.PathLike[str], feature: int, **kwargs: Any) -> Path:
        """Save :meth:`plot_3d` as an image; returns the path."""
        return save_figure(self.plot_3d(feature, **kwargs), path)

    # ---------------------------------------------------------------- files

    def _meta(self) -> dict[str, Any]:
        return {
            "format": "histobag-slidemap",
            "coordinates": self.coordinates,
            "tile_px": self.tile_px,
            "tile_um": self.tile_um,
        }

    def save_coords(self, path: str | os.PathLike[str]) -> Path:
        """Write the points (and logits) as ``.npz`` or ``.parquet`` (never a pickle)."""
        path = Path(path)
        columns = {c: self.data[c].to_numpy() for c in self.data.columns}
        if "label" in columns and not is_continuous(self.data["label"]):
            columns["label"] = (
                self.data["label"]
                .astype(object)
                .where(self.data["label"].notna(), "")
                .astype(str)
                .to_numpy()
            )
        for name, values in columns.items():
            if values.dtype == object:  # npz without pickle needs fixed-width strings
                columns[name] = values.astype(str)
        if self.logits is not None:
            for i in range(self.logits.shape[1]):
                columns[f"logit_{i}"] = self.logits[:, i]
        if path.suffix == ".npz":
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, _meta=np.asarray(json.dumps(self._meta())), **columns)
        elif path.suffix == ".parquet":
            pa = require("pyarrow", extra="analysis", purpose="SlideMap.save_coords to .parquet")
            pq = require(
                "pyarrow.parquet", extra="analysis", purpose="SlideMap.save_coords to .parquet"
            )
            table = pa.table(columns)
            table = table.replace_schema_metadata({"histobag": json.dumps(self._meta())})
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
        else:
            raise HistobagError(f"save_coords writes .npz or .parquet, not {path.suffix!r}")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SlideMap:
        """Read a map written by :meth:`save_coords`."""
        import pandas as pd

        path = Path(path)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["_meta"]))
                columns = {k: npz[k] for k in npz.files if k != "_meta"}
        elif path.suffix == ".parquet":
            pq = require("pyarrow.parquet", extra="analysis", purpose="SlideMap.load of .parquet")
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {}).get(b"histobag", b"{}"))
            columns = {name: table.column(name).to_numpy() for name in table.column_names}
        else:
            raise HistobagError(f"SlideMap.load reads .npz or .parquet, not {path.suffix!r}")
        logit_cols = sorted(
            (c for c in columns if c.startswith("logit_")), key=lambda c: int(c[6:])
        )
        logits = np.stack([columns.pop(c) for c in logit_cols], axis=1) if logit_cols else None
        data = pd.DataFrame(columns)
        if "label" in data.columns and data["label"].dtype == object:
            data["label"] = data["label"].replace("", None)
        return cls(
            data,
            logits=logits,
            coordinates=meta.get("coordinates", "top_left"),
            tile_px=meta.get("tile_px"),
            tile_um=meta.get("tile_um"),
        )

    def __repr__(self) -> str:
        return f"SlideMap(points={len(self)}, slides={self.data['slide'].nunique()})"
