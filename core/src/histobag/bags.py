"""``generate_feature_bags``: one feature bag per slide of a dataset, resumable and honest.

- Slides are tiled on the fly (or read from the dataset's TFRecords) by the streaming engine.
- Each bag is written atomically by a registered bag writer; ``bags_config.json`` records how.
- A rerun skips slides whose bag is whole and matches the folder's configuration; a different
  configuration is refused unless ``overwrite=True``.
- A slide that fails (unreadable, too few tiles) is recorded with its reason in
  ``run_report.json``; the others finish.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histobag.bags_config import (
    CONFIG_NAME,
    build_normalizer,
    differences,
    make_config,
    read_config,
)
from histobag.engine import Job, SlideResult, run
from histobag.errors import ConfigError, HistobagError
from histobag.io.bags import BagWriter, get_writer, remove_stale_temporaries, write_json_atomic
from histobag.naming import safe_name

REPORT_NAME = "run_report.json"


@dataclass
class BagRunReport:
    """What a bag run did, per slide.

    Attributes:
        outdir: The bags folder.
        done: Slides extracted in this run → number of tiles.
        skipped: Slides whose bag already existed with this configuration → number of tiles.
        failed: Slides that could not be extracted → reason.
        seconds: Wall time of the run.
    """

    outdir: Path
    done: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no slide failed."""
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``run_report.json``)."""
        slides: dict[str, Any] = {}
        for name, n in self.done.items():
            slides[name] = {"status": "done", "tiles": n}
        for name, n in self.skipped.items():
            slides[name] = {"status": "skipped", "tiles": n, "reason": "bag already complete"}
        for name, reason in self.failed.items():
            slides[name] = {"status": "failed", "reason": reason}
        return {
            "outdir": str(self.outdir),
            "seconds": round(self.seconds, 3),
            "done": len(self.done),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "slides": dict(sorted(slides.items())),
        }

    def summary(self) -> str:
        """A table of slides and their status."""
        rows = [(n, "done", str(t), "") for n, t in self.done.items()]
        rows += [(n, "skipped", str(t), "already complete") for n, t in self.skipped.items()]
        rows += [(n, "FAILED", "-", r) for n, r in self.failed.items()]
        rows.sort()
        headers = ("slide", "status", "tiles", "note")
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(4)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(
            f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed "
            f"in {self.seconds:.1f} s -> {self.outdir}"
        )
        return "\n".join(lines)


class BagSink:
    """Writes each finished slide's bag; records failures; keeps the report current."""

    def __init__(
        self, writer: BagWriter, report: BagRunReport, min_tiles: int, on_slide: Any = None
    ) -> None:
        self.writer = writer
        self.report = report
        self.min_tiles = min_tiles
        self.on_slide = on_slide
        self.lock = threading.Lock()

    def finish(self, result: SlideResult) -> None:
        n = len(result.features)
        if n == 0 or n < self.min_tiles:
            self.fail(
                result.key,
                f"only {n} tiles (min_tiles={self.min_tiles})"
                if n
                else "no tiles: no tissue found (check tissue detection, ROIs and tile size)",
            )
            return
        self.writer.write(result.key, result.features, result.top_left, result.geometry)
        with self.lock:
            self.report.done[result.key] = n
            self._save()
        if self.on_slide:
            self.on_slide(result.key, "done", n)

    def fail(self, key: str, reason: str) -> None:
        with self.lock:
            self.report.failed[key] = reason
            self._save()
        if self.on_slide:
            self.on_slide(key, "failed", reason)

    def _save(self) -> None:
        write_json_atomic(self.report.outdir / REPORT_NAME, self.report.to_dict())


def resolve_extractor(extractor: Any, tile_px: int) -> Any:
    if not isinstance(extractor, str):
        return extractor
    from histobag.extractors.registry import build_feature_extractor, extractor_info
    from histobag.models import extractor_from_saved_model, is_saved_model

    if is_saved_model(extractor):
        return extractor_from_saved_model(extractor)

    spec = extractor_info(extractor)
    kwargs = {"tile_px": tile_px} if "tile_px" in spec.required_kwargs else {}
    return build_feature_extractor(extractor, **kwargs)


def resolve_normalizer(normalizer: Any) -> Any:
    if normalizer is None or not isinstance(normalizer, str):
        return normalizer
    return build_normalizer({"method": normalizer, "fit": None})


def prepare_bags_folder(
    outdir: Path, config: dict[str, Any], writer: BagWriter, overwrite: bool
) -> None:
    """Refuse to mix configurations; on ``overwrite`` remove the old bags."""
    outdir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(outdir)
    existing = outdir / CONFIG_NAME
    if existing.exists():
        old = read_config(existing)
        diff = differences(old, config)
        if diff and not overwrite:
            raise ConfigError(
                f"{outdir} already holds bags made with a different configuration:\n  "
                + "\n  ".join(diff)
                + "\nUse another outdir, or pass overwrite=True to replace those bags."
            )
        if diff:
            old_writer = get_writer(old["writer"], outdir)
            for slide in old_writer.slides():
                for path in old_writer.files(slide):
                    path.unlink(missing_ok=True)
            (outdir / "run_report.json").unlink(missing_ok=True)
        if not diff:
            return  # keep the original creation time and versions
    write_json_atomic(existing, config)


class _Progress:
    """Overall (slides) and per-slide (tiles, tiles/s) progress bars."""

    def __init__(self, total_slides: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.slides = tqdm(
            total=total_slides,
            desc="slides",
            unit="slide",
            disable=not enabled,
            position=0,
            file=sys.stderr,
        )
        self.tiles = tqdm(
            desc="tiles", unit="tile", disable=not enabled, position=1, file=sys.stderr
        )
        self.current = None

    def tile(self, key: str, n: int) -> None:
        if key != self.current:
            self.current = key
            self.tiles.set_description(f"tiles ({key})", refresh=False)
        self.tiles.update(n)

    def slide(self, key: str, status: str, detail: Any) -> None:
        self.slides.update(1)
        if status == "failed":
            self.slides.write(f"failed: {key}: {detail}", file=sys.stderr)

    def close(self) -> None:
        self.tiles.close()
        self.slides.close()


def generate_feature_bags(
    extractor: Any,
    dataset: Any,
    outdir: str | os.PathLike[str],
    *,
    normalizer: Any = None,
    writer: str = "pt",
    batch_size: int = 32,
    num_workers: int | str = "auto",
    min_tiles: int = 0,
    max_tiles: int = 0,
    overwrite: bool = False,
    source: str = "auto",
    progress: bool = True,
) -> BagRunReport:
    """Write one feature bag per slide of ``dataset`` into ``outdir``.

    Args:
        extractor: A registered extractor name or a built :class:`FeatureExtractor`.
        dataset: A :class:`histobag.Dataset` (its tile size is used).
        outdir: Bags folder; created if needed.
        normalizer: A stain normalizer name (``"macenko"``...) or object, applied on the device.
        writer: ``"pt"`` (slideflow), ``"h5"`` (CLAM/TRIDENT), ``"safetensors"``, or a writer
            registered by a pack.
        batch_size: Tiles per model call.
        num_workers: Tile-reading processes, or ``"auto"``.
        min_tiles: Slides with fewer tiles get no bag and are reported.
        max_tiles: If > 0, at most this many tiles per slide, evenly spaced over the slide.
        overwrite: Replace bags made with a different configuration instead of refusing.
        source: ``"slides"`` tiles slides on the fly, ``"tfrecords"`` reads the dataset's
            TFRecords, ``"auto"`` prefers slides and falls back to TFRecords.
        progress: Show progress bars.

    Returns:
        A :class:`BagRunReport`; also written as ``run_report.json`` in ``outdir``.

    Raises:
        ConfigError: ``outdir`` holds bags of another configuration and ``overwrite`` is False.
    """
    start = time.perf_counter()
    outdir = Path(outdir)
    extractor = resolve_extractor(extractor, dataset.tile_px)
    normalizer = resolve_normalizer(normalizer)
    bag_writer = get_writer(writer, outdir)
    config = make_config(
        extractor,
        normalizer,
        tile_px=dataset.tile_px,
        tile_um=dataset.tile_um,
        writer=writer,
        coordinates=bag_writer.coordinates,
    )
    prepare_bags_folder(outdir, config, bag_writer, overwrite)

    report = BagRunReport(outdir)
    jobs = []
    for key, job in slide_jobs(dataset, source, max_tiles):
        if bag_writer.is_complete(key, extractor.num_features):
            report.skipped[key] = len(bag_writer.read(key)[0])
        elif isinstance(job, str):
            report.failed[key] = job
        else:
            jobs.append(job)
    bars = _Progress(len(jobs), progress)
    sink = BagSink(bag_writer, report, min_tiles, on_slide=bars.slide)
    write_json_atomic(outdir / REPORT_NAME, report.to_dict())
    try:
        run(
            extractor,
            jobs,
            sink,
            batch_size=batch_size,
            num_workers=num_workers,
            normalizer=normalizer,
            spill_dir=outdir,
            progress=bars.tile,
        )
    finally:
        bars.close()
        report.seconds = time.perf_counter() - start
        write_json_atomic(outdir / REPORT_NAME, report.to_dict())
    return report


def slide_jobs(dataset: Any, source: str, max_tiles: int) -> list[tuple[str, Job | str]]:
    """(bag name, job or failure reason) for every slide of the dataset."""
    from histobag.sources import OpenTFRecord, OpenWSI

    if source not in ("auto", "slides", "tfrecords"):
        raise HistobagError(f"source must be 'auto', 'slides' or 'tfrecords', not {source!r}")
    slide_paths = {Path(p).stem: Path(p) for p in dataset.slide_paths()}
    tfrecords = {Path(p).stem: Path(p) for p in dataset.tfrecords()} if source != "slides" else {}
    names = sorted(set(dataset.slides()) | (set(tfrecords) if source == "tfrecords" else set()))
    out: list[tuple[str, Job | str]] = []
    for name in names:
        key = safe_name(name)
        wsi_kwargs = dataset.wsi_kwargs(name) if hasattr(dataset, "wsi_kwargs") else {}
        if source != "tfrecords" and name in slide_paths:
            opener: Any = OpenWSI(
                str(slide_paths[name]), dataset.tile_px, dataset.tile_um, wsi_kwargs
            )
        elif source != "slides" and name in tfrecords:
            opener = OpenTFRecord(
                str(tfrecords[name]),
                dataset.tile_px,
                _tile_um_value(dataset),
                *_extent(slide_paths.get(name), dataset),
            )
        else:
            where = "slide file" if source == "slides" else "slide file or TFRecord"
            out.append((key, f"no {where} found for this slide"))
            continue
        if max_tiles > 0:
            opener = Subsample(opener, max_tiles)
        out.append((key, Job(key, opener)))
    return out


def _tile_um_value(dataset: Any) -> float:
    from histobag.slide.magnification import tile_microns

    return float(tile_microns(dataset.tile_px, dataset.tile_um))


def _extent(slide_path: Path | None, dataset: Any) -> tuple[int, float | None]:
    """Level-0 tile extent and mpp for a TFRecord whose slide is available, else (0, None)."""
    if slide_path is None:
        return 0, None
    try:
        from histobag.slide import WSI

        wsi = WSI(slide_path, dataset.tile_px, dataset.tile_um, tissue=None)
        return int(wsi.full_extract_px), float(wsi.mpp)
    except HistobagError:
        return 0, None


class _Subset:
    """A tile source restricted to some of its tiles."""

    def __init__(self, source: Any, indices: np.ndarray) -> None:
        self.source = source
        self.indices = indices
        grid_index = getattr(source, "grid_index", None)
        self.grid_index = None if grid_index is None else grid_index[indices]

    def __len__(self) -> int:
        return len(self.indices)

    def read_tiles(self, idx: Any, *, return_mask: bool = False) -> Any:
        return self.source.read_tiles(self.indices[np.asarray(idx)], return_mask=return_mask)

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class Subsample:
    """Wrap an opener to keep at most ``max_tiles`` tiles, evenly spaced (deterministic)."""

    opener: Any
    max_tiles: int

    def __call__(self) -> tuple[Any, np.ndarray, Any]:
        source, top_left, geometry = self.opener()
        n = len(source)
        if n <= self.max_tiles:
            return source, top_left, geometry
        indices = np.unique(np.linspace(0, n - 1, self.max_tiles).round().astype(np.int64))
        return _Subset(source, indices), np.asarray(top_left)[indices], geometry


__all__ = ["BagRunReport", "generate_feature_bags"]
