"""``DatasetFeatures``: a dataset's tile features held in memory, per slide.

Made by running a model over a dataset (the streaming engine), or read from bags already on
disk (:meth:`DatasetFeatures.from_bags`). Adds slideflow's analyses: statistics per feature
across outcome categories, box plots, a tile table, and slide-level predictions of trained
models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from histobag import validation
from histobag.analysis.features import load_model_extractor, saved_normalizer, split_logits
from histobag.analysis.plots import box_plot_figure, save_figure
from histobag.analysis.stats import feature_tests, normalise_labels, slide_values, tile_groups
from histobag.bags.claims import Owner
from histobag.bags.config import make_config, read_config
from histobag.bags.generate import (
    BagRunReport,
    BagSink,
    build_extractor_for_run,
    build_normalizer_for_run,
    dataset_tissue_record,
    prepare_bags_folder,
    slide_jobs,
)
from histobag.bags.read import read_bag
from histobag.engine import CollectSink, SlideResult, run
from histobag.errors import HistobagError
from histobag.extractors.saved import is_saved_model
from histobag.files import atomic_path
from histobag.io.bag_writers import get_writer
from histobag.tile_transforms import resolve_tile_transforms

if TYPE_CHECKING:
    import pandas as pd


class DatasetFeatures:
    """Features of every tile of every slide of a dataset, in memory.

    All activations are kept in RAM (about ``n_tiles × num_features × 4`` bytes): for large
    datasets prefer :func:`histobag.bags.generate_feature_bags`, which streams each slide to
    disk, then analyse the bags with :meth:`from_bags`.

    Args:
        extractor: A registered extractor name, a saved model folder (see
            :func:`histobag.save_model`; its logits are kept in :attr:`logits`) or a
            built extractor.
        dataset: A :class:`histobag.Dataset`.
        annotations: Labels for statistics and plots: a dict slide → label, or
            ``(labels, unique)`` as returned by ``dataset.labels(outcome)``.
        normalizer: Stain normalizer name or object (default: the one recorded in a saved
            model, else none).
        tile_transforms: Registered tile transforms applied after the normalizer (names or
            ``{"name", "kwargs"}``; see :func:`histobag.tile_transforms.resolve_tile_transforms`).
        batch_size: Tiles per model call: an integer >= 1.
        num_workers: Tile-reading processes (an integer from 0 to 1024), or ``"auto"``.
        max_tiles: If > 0, at most this many tiles per slide (evenly spaced).
        layers: Layer(s) of a saved model (or of a registered model accepting ``layers=``).
        include_logits: Keep a saved model's logits (default: True for saved models).

    Attributes:
        activations: slide → float32 (n_tiles, num_features).
        logits: slide → float32 (n_tiles, n_classes) for trained models, else empty.
        locations: slide → int64 (n_tiles, 2) level-0 tile coordinates, in the
            :attr:`coordinates` convention (``"top_left"`` when extracted here; bags read
            with :meth:`from_bags` keep their writer's convention, ``"centre"`` for ``pt``).
        labels: slide → category name (from ``annotations``).
        failed: slide → reason, for slides that could not be read.
    """

    def __init__(
        self,
        extractor: Any,
        dataset: Any,
        *,
        annotations: Any = None,
        normalizer: Any = "auto",
        tile_transforms: Any = None,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        max_tiles: int = 0,
        layers: str | Sequence[str] | None = None,
        include_logits: bool | None = None,
    ) -> None:
        batch_size = validation.check_batch_size(batch_size)
        num_workers = validation.check_num_workers(num_workers)
        max_tiles = validation.non_negative_int("max_tiles", max_tiles)
        self.tile_transforms = resolve_tile_transforms(tile_transforms)  # before any slide
        if isinstance(extractor, (str, os.PathLike)) and is_saved_model(extractor):
            extractor = load_model_extractor(
                extractor,
                layers=layers,
                include_logits=True if include_logits is None else include_logits,
            )
        elif layers is not None:
            extractor = load_model_extractor(extractor, layers=layers, tile_px=dataset.tile_px)
        self.extractor = build_extractor_for_run(extractor, dataset.tile_px)
        if isinstance(normalizer, str) and normalizer == "auto":
            self.normalizer = saved_normalizer(self.extractor)
        else:
            self.normalizer = build_normalizer_for_run(normalizer)
        self.dataset = dataset
        jobs = slide_jobs(dataset, "auto", max_tiles)
        missing = {key: job for key, job in jobs if isinstance(job, str)}
        sink = CollectSink()
        runnable = [job for _, job in jobs if not isinstance(job, str)]
        run(
            self.extractor,
            runnable,
            sink,
            batch_size=batch_size,
            num_workers=num_workers,
            normalizer=self.normalizer,
            tile_transforms=self.tile_transforms,
        )
        self._results: dict[str, SlideResult] = dict(sorted(sink.results.items()))
        self.failed: dict[str, str] = {**missing, **sink.failures}
        self.activations: dict[str, np.ndarray] = {}
        self.logits: dict[str, np.ndarray] = {}
        for key, result in self._results.items():
            acts, logits = split_logits(self.extractor, result.features)
            self.activations[key] = np.ascontiguousarray(acts)
            if logits is not None:
                self.logits[key] = np.ascontiguousarray(logits)
        self.locations = {k: r.top_left for k, r in self._results.items()}
        self.coordinates = "top_left"
        self.tile_px = dataset.tile_px
        self.tile_um = dataset.tile_um
        self.bags_dir: Path | None = None
        self.config: dict[str, Any] = {}
        self.labels = normalise_labels(annotations)
        config = (getattr(self.extractor, "extra", None) or {}).get("config") or {}
        self.outcome_labels: list[str] = list(config.get("outcome_labels") or [])

    @classmethod
    def from_bags(
        cls,
        bags_dir: str | os.PathLike[str],
        annotations: Any = None,
        *,
        slides: Sequence[str] | None = None,
    ) -> DatasetFeatures:
        """Analyse feature bags already on disk (any registered writer).

        Args:
            bags_dir: A folder written by ``generate_feature_bags`` (with ``bags_config.json``).
            annotations: dict slide → label, or ``(labels, unique)`` from ``Dataset.labels``.
            slides: Only these slides (default: every bag in the folder).

        The extractor is not rebuilt (:attr:`extractor` is None); :attr:`config` holds the
        folder's configuration and :attr:`coordinates` the bags' coordinate convention.
        """
        folder = Path(bags_dir)
        config = read_config(folder)
        writer = get_writer(config["writer"], folder)
        names = writer.slides() if slides is None else list(slides)
        self = cls._empty(config, writer.coordinates)
        self.bags_dir = folder
        for name in sorted(names):
            try:
                features, coords, _ = read_bag(folder, name, writer=config["writer"])
            except Exception as exc:  # a damaged bag is reported, the others load
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                continue
            self.activations[name] = np.ascontiguousarray(features, dtype=np.float32)
            self.locations[name] = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.labels = normalise_labels(annotations)
        return self

    @classmethod
    def _empty(cls, config: dict[str, Any], coordinates: str) -> DatasetFeatures:
        self = object.__new__(cls)
        self.extractor = self.normalizer = self.dataset = self.bags_dir = None
        self.tile_transforms = []
        self.config = config
        self._results, self.failed = {}, {}
        self.activations, self.locations, self.logits = {}, {}, {}
        self.coordinates = coordinates
        self.tile_px = config.get("tile_px")
        self.tile_um = config.get("tile_um")
        self.labels, self.outcome_labels = {}, []
        return self

    @classmethod
    def from_arrays(
        cls,
        activations: dict[str, np.ndarray],
        locations: dict[str, np.ndarray] | None = None,
        *,
        annotations: Any = None,
        logits: dict[str, np.ndarray] | None = None,
        tile_px: int | None = None,
        tile_um: float | str | None = None,
        coordinates: str = "top_left",
    ) -> DatasetFeatures:
        """Features already in memory: slide → (n_tiles, F) (and locations, logits).

        Locations default to ``(-1, -1)`` (unknown: no tile images for mosaics).
        """
        self = cls._empty({"tile_px": tile_px, "tile_um": tile_um}, coordinates)
        for slide in sorted(activations):
            acts = np.ascontiguousarray(activations[slide], dtype=np.float32)
            self.activations[slide] = acts
            self.locations[slide] = (
                np.asarray(locations[slide], np.int64).reshape(-1, 2)
                if locations is not None
                else np.full((len(acts), 2), -1, np.int64)
            )
            if logits is not None and slide in logits:
                self.logits[slide] = np.asarray(logits[slide], np.float32)
        self.labels = normalise_labels(annotations)
        return self

    # ---------------------------------------------------------------- basics

    @property
    def slides(self) -> list[str]:
        """Slides with features."""
        return list(self.activations)

    @property
    def num_features(self) -> int:
        """Length of each feature vector (logits excluded)."""
        for acts in self.activations.values():
            return int(acts.shape[1])
        extractor = self.extractor
        if extractor is None:
            return int(self.config.get("num_features") or 0)
        return extractor.num_features - int(getattr(extractor, "num_logits", 0))

    @property
    def num_tiles(self) -> int:
        """Tiles over all slides."""
        return sum(len(a) for a in self.activations.values())

    def label_slides(self, annotations: Any) -> DatasetFeatures:
        """Set :attr:`labels` (dict slide → label, or ``(labels, unique)``); returns self."""
        self.labels = normalise_labels(annotations)
        return self

    # ---------------------------------------------------------------- predictions

    def _require_logits(self) -> None:
        if not self.logits:
            raise HistobagError(
                "No logits: these features were not made by a trained (saved) model. Pass a "
                "saved model folder to DatasetFeatures to get logits."
            )

    def logits_mean(self) -> dict[str, np.ndarray]:
        """Slide → mean of its tiles' logits (n_classes,)."""
        self._require_logits()
        return {s: v.mean(axis=0) for s, v in self.logits.items() if len(v)}

    def logits_predict(self) -> dict[str, Any]:
        """Slide → predicted class (argmax of :meth:`logits_mean`), as the outcome label when
        the model records its labels, else the class index."""
        out: dict[str, Any] = {}
        for slide, mean in self.logits_mean().items():
            index = int(np.argmax(mean))
            out[slide] = self.outcome_labels[index] if self.outcome_labels else index
        return out

    # ---------------------------------------------------------------- tables

    def to_df(self, *, include_logits: bool = True) -> pd.DataFrame:
        """One row per tile: ``slide``, ``x``, ``y`` (level-0 tile location, see
        :attr:`coordinates`), ``label`` (when labelled), then one column per feature
        (``feature_0``...) and per logit (``logit_0``...).

        Wide columns (rather than slideflow's single array column) keep the table directly
        usable with pandas and CSV; :meth:`SlideMap.from_features` accepts either layout.
        """
        import pandas as pd

        slides = self.slides
        counts = [len(self.activations[s]) for s in slides]
        n_features = self.num_features
        acts = (
            np.concatenate([self.activations[s] for s in slides])
            if slides
            else np.zeros((0, n_features), np.float32)
        )
        locs = (
            np.concatenate([self.locations[s] for s in slides])
            if slides
            else np.zeros((0, 2), np.int64)
        )
        slide_col = np.repeat(np.asarray(slides, dtype=object), counts)
        columns: dict[str, Any] = {"slide": slide_col, "x": locs[:, 0], "y": locs[:, 1]}
        if self.labels:
            columns["label"] = [self.labels.get(s) for s in slide_col]
        frame = pd.DataFrame(columns)
        parts = [frame, pd.DataFrame(acts, columns=[f"feature_{i}" for i in range(n_features)])]
        if include_logits and self.logits:
            logits = np.concatenate([self.logits[s] for s in slides])
            parts.append(
                pd.DataFrame(logits, columns=[f"logit_{i}" for i in range(logits.shape[1])])
            )
        return pd.concat(parts, axis=1)

    def to_csv(self, path: str | os.PathLike[str], **kwargs: Any) -> Path:
        """Write :meth:`to_df` as CSV (atomically); keyword arguments go to :meth:`to_df`."""
        path = Path(path)
        with atomic_path(path) as tmp:
            self.to_df(**kwargs).to_csv(tmp, index=False)
        return path

    # ---------------------------------------------------------------- statistics

    def _labelled(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        if not self.labels:
            raise HistobagError(
                "No labels: pass annotations= (a dict slide -> label, or "
                "dataset.labels(outcome)) or call label_slides()."
            )
        acts = {s: a for s, a in self.activations.items() if s in self.labels and len(a)}
        return acts, self.labels

    def stats(
        self,
        outdir: str | os.PathLike[str] | None = None,
        method: str = "mean",
        test: str = "anova",
        *,
        threshold: float = 0.5,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Test every feature for a difference between the label categories.

        At tile level each tile is an observation; at slide level each slide contributes one
        value per feature (``method``). p-values are Benjamini-Hochberg adjusted
        (``p_fdr``) over the features.

        Args:
            outdir: If given, write ``tile_stats.csv`` and ``slide_stats.csv`` there.
            method: Slide value: ``"mean"`` activation, or ``"threshold"``: fraction of the
                slide's tiles above ``threshold``.
            test: ``"anova"`` (one-way ANOVA, as slideflow) or ``"kruskal"`` (Kruskal-Wallis).
            threshold: For ``method="threshold"``.

        Returns:
            ``(tile_stats, slide_stats)`` DataFrames, one row per feature sorted by p-value
            (columns ``feature, statistic, p, p_fdr, mean_<category>..., n_<category>...``).
            A level where some category has fewer than two observations gives NaN p-values.
        """
        acts, labels = self._labelled()
        tile_df = feature_tests(tile_groups(acts, labels), test)
        per_slide = slide_values(acts, method, threshold)
        slide_groups = {
            c: np.stack([v for s, v in per_slide.items() if labels[s] == c])
            for c in sorted({labels[s] for s in per_slide})
        }
        slide_df = feature_tests(slide_groups, test)
        if outdir is not None:
            outdir = Path(outdir)
            outdir.mkdir(parents=True, exist_ok=True)
            for df, name in ((tile_df, "tile_stats.csv"), (slide_df, "slide_stats.csv")):
                with atomic_path(outdir / name) as tmp:
                    df.to_csv(tmp, index=False)
        return tile_df, slide_df

    def box_plots(
        self,
        features: int | Sequence[int],
        outdir: str | os.PathLike[str],
        *,
        method: str = "mean",
        threshold: float = 0.5,
    ) -> list[Path]:
        """One PNG per feature (``box_plot_<n>.png``): tile-level and slide-level box plots,
        categories side by side. Returns the paths."""
        acts, labels = self._labelled()
        tiles = tile_groups(acts, labels)
        per_slide = slide_values(acts, method, threshold)
        slides_by_cat = {
            c: np.stack([v for s, v in per_slide.items() if labels[s] == c]) for c in tiles
        }
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        paths = []
        for feature in [features] if isinstance(features, int) else list(features):
            fig = box_plot_figure(tiles, slides_by_cat, int(feature))
            paths.append(save_figure(fig, outdir / f"box_plot_{int(feature)}.png"))
        return paths

    # ---------------------------------------------------------------- bags

    def to_torch(
        self, outdir: str | os.PathLike[str], *, writer: str = "pt", overwrite: bool = False
    ) -> BagRunReport:
        """Write the same bags and ``bags_config.json`` as ``generate_feature_bags`` would."""
        if self.extractor is None:
            raise HistobagError(
                f"These features were read from bags; they are already on disk in {self.bags_dir}."
            )
        outdir = validation.check_output_dir(outdir)
        bag_writer = get_writer(writer, outdir)
        config = make_config(
            self.extractor,
            self.normalizer,
            tile_px=self.dataset.tile_px,
            tile_um=self.dataset.tile_um,
            writer=writer,
            coordinates=bag_writer.coordinates,
            tile_transforms=self.tile_transforms,
            tissue=dataset_tissue_record(self.dataset),
        )
        prepare_bags_folder(outdir, config, overwrite)
        report = BagRunReport(outdir, owner=asdict(Owner.current()))
        sink = BagSink(bag_writer, report, min_tiles=0)
        for result in self._results.values():
            sink.finish(result)
        for key, reason in self.failed.items():
            sink.fail(key, reason)
        sink.close()
        return report

    def __repr__(self) -> str:
        tag = self.extractor.tag if self.extractor is not None else str(self.bags_dir)
        return (
            f"DatasetFeatures(extractor={tag!r}, slides={len(self.slides)}, "
            f"tiles={self.num_tiles}, num_features={self.num_features})"
        )


__all__ = ["DatasetFeatures"]
