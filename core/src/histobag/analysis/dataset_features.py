"""``DatasetFeatures``: a dataset's tile features held in memory, per slide."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from histobag.bags import (
    BagRunReport,
    BagSink,
    prepare_bags_folder,
    resolve_extractor,
    resolve_normalizer,
    slide_jobs,
)
from histobag.bags_config import make_config
from histobag.engine import CollectSink, SlideResult, run
from histobag.io.bags import get_writer


class DatasetFeatures:
    """Features of every tile of every slide of a dataset, in memory.

    All activations are kept in RAM (about ``n_tiles × num_features × 4`` bytes): for large
    datasets prefer :func:`histobag.bags.generate_feature_bags`, which streams each slide to
    disk.

    Args:
        extractor: A registered extractor name or a built extractor.
        dataset: A :class:`histobag.Dataset`.
        normalizer: Stain normalizer name or object.
        batch_size: Tiles per model call.
        num_workers: Tile-reading processes, or ``"auto"``.
        max_tiles: If > 0, at most this many tiles per slide (evenly spaced).

    Attributes:
        activations: slide → float32 (n_tiles, num_features).
        locations: slide → int64 (n_tiles, 2) level-0 top-left corners of the tiles.
        failed: slide → reason, for slides that could not be read.
    """

    def __init__(
        self,
        extractor: Any,
        dataset: Any,
        *,
        normalizer: Any = None,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        max_tiles: int = 0,
    ) -> None:
        self.extractor = resolve_extractor(extractor, dataset.tile_px)
        self.normalizer = resolve_normalizer(normalizer)
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
        )
        self._results: dict[str, SlideResult] = dict(sorted(sink.results.items()))
        self.failed: dict[str, str] = {**missing, **sink.failures}
        self.activations = {k: r.features for k, r in self._results.items()}
        self.locations = {k: r.top_left for k, r in self._results.items()}

    @property
    def slides(self) -> list[str]:
        """Slides with features."""
        return list(self._results)

    @property
    def num_features(self) -> int:
        """Length of each feature vector."""
        return self.extractor.num_features

    def to_torch(
        self, outdir: str | os.PathLike[str], *, writer: str = "pt", overwrite: bool = False
    ) -> BagRunReport:
        """Write the same bags and ``bags_config.json`` as ``generate_feature_bags`` would."""
        outdir = Path(outdir)
        bag_writer = get_writer(writer, outdir)
        config = make_config(
            self.extractor,
            self.normalizer,
            tile_px=self.dataset.tile_px,
            tile_um=self.dataset.tile_um,
            writer=writer,
            coordinates=bag_writer.coordinates,
        )
        prepare_bags_folder(outdir, config, bag_writer, overwrite)
        report = BagRunReport(outdir)
        sink = BagSink(bag_writer, report, min_tiles=0)
        for result in self._results.values():
            sink.finish(result)
        for key, reason in self.failed.items():
            sink.fail(key, reason)
        return report

    def __repr__(self) -> str:
        n = sum(len(a) for a in self.activations.values())
        return (
            f"DatasetFeatures(extractor={self.extractor.tag!r}, slides={len(self.slides)}, "
            f"tiles={n}, num_features={self.num_features})"
        )


__all__ = ["DatasetFeatures"]
