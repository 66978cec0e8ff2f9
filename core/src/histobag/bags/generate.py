"""``generate_feature_bags``: one feature bag per slide of a dataset, resumable and honest.

- Slides are tiled on the fly (or read from the dataset's TFRecords) by the streaming engine.
- Each bag is written atomically by a registered bag writer; ``bags_config.json`` records how.
- A rerun skips slides whose bag is whole and matches the folder's configuration; a different
  configuration is refused unless ``overwrite=True``.
- A slide that fails (unreadable, too few tiles) is recorded with its reason in
  ``run_report.json``; the others finish.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from histobag import validation
from histobag.bags import manifest as integrity
from histobag.bags.claims import DEFAULT_CLAIM_TIMEOUT, ClaimBoard, Owner
from histobag.bags.config import (
    CONFIG_NAME,
    build_normalizer,
    differences,
    fingerprint,
    make_config,
    read_config,
)
from histobag.bags.report import PARTS_DIR, REPORT_NAME, BagRunReport, write_run_report
from histobag.bags.schedule import ClaimSchedule
from histobag.bags.space import short_of_space
from histobag.cluster import Shard, parse_shard, process_start_time
from histobag.engine import Job, SlideResult, run
from histobag.errors import (
    ArgumentError,
    ConfigError,
    EmptyRunWarning,
    HistobagError,
    LowDiskSpaceWarning,
    StorageError,
)
from histobag.extractors.registry import (
    build_feature_extractor,
    extractor_info,
    require_tile_encoder,
)
from histobag.extractors.saved import is_saved_model
from histobag.files import remove_stale_temporaries, storage_error, write_json_atomic
from histobag.io.bag_writers import BagWriter, get_writer
from histobag.naming import safe_name
from histobag.slide import WSI
from histobag.slide.magnification import tile_microns
from histobag.slide.readers import as_source, source_stem
from histobag.slide.tissue import DEFAULT_TISSUE_DETECTOR, LEGACY_TISSUE_DETECTOR, tissue_record
from histobag.tile_readers import OpenTFRecord, OpenWSI, Subsample
from histobag.tile_transforms import resolve_tile_transforms

SOURCES = ("auto", "slides", "tfrecords")
_RUNS_IN_THIS_PROCESS: list[Path] = []  # a later run in the same process starts when it starts

logger = logging.getLogger(__name__)


class BagSink:
    """Writes each finished slide's bag; records failures; keeps this process's report current.

    With a :class:`~histobag.bags.schedule.ClaimSchedule`, a bag is written only while this
    process still holds the slide's claim, and the claim is released once the bag is recorded
    (or the slide failed).
    """

    def __init__(
        self,
        writer: BagWriter,
        report: BagRunReport,
        min_tiles: int,
        on_slide: Any = None,
        schedule: ClaimSchedule | None = None,
    ) -> None:
        self.writer = writer
        self.report = report
        self.min_tiles = min_tiles
        self.on_slide = on_slide
        self.schedule = schedule
        self.lock = threading.Lock()

    def finish(self, result: SlideResult) -> None:
        """Write the bag of a finished slide (or fail it when it has too few tiles)."""
        n = len(result.features)
        if n == 0 or n < self.min_tiles:
            self.fail(
                result.key,
                f"only {n} tiles (min_tiles={self.min_tiles})"
                if n
                else "no tiles: no tissue found (check tissue detection, ROIs and tile size)",
            )
            return
        claim = self.schedule.claim_of(result.key) if self.schedule else None
        if claim is not None and not self.schedule.board.holds(claim):  # type: ignore[union-attr]
            # This process stalled past the claim timeout and another took the slide over:
            # that one writes the bag.
            self.schedule.release(result.key)  # type: ignore[union-attr]
            with self.lock:
                self.report.note(result.key, lost_claim=True)
            logger.warning("%s: claim taken over by another process; bag left to it", result.key)
            return
        self.writer.write(result.key, result.features, result.top_left, result.geometry)
        # Hash the files just renamed into place (still in the page cache) and record them.
        integrity.record_bags(self.writer.outdir, {result.key: (self.writer.files(result.key), n)})
        if self.schedule is not None:
            self.schedule.board.clear_failure(result.key)
            self.schedule.release(result.key)
        with self.lock:
            self.report.done[result.key] = n
            self.report.note(result.key, seconds=_seconds_since(claim))
            if result.geometry.reader:  # which library read the slide, recorded per slide
                self.report.note(result.key, reader=result.geometry.reader)
            self.save()
        if self.on_slide:
            self.on_slide(result.key, "done", n)

    def fail(self, key: str, reason: str) -> None:
        """Record that ``key`` could not be extracted."""
        if self.schedule is not None and self.schedule.claim_of(key) is not None:
            try:
                self.schedule.board.record_failure(key, reason)
            finally:
                self.schedule.release(key)
        with self.lock:
            self.report.failed[key] = reason
            self.report.note(key)
            self.save()
        if self.on_slide:
            self.on_slide(key, "failed", reason)

    def abandon(self, key: str, reason: str) -> None:
        """The run stopped before ``key`` was finished: reported, and its claim released
        without a failure note, so other processes of the run still do it."""
        if self.schedule is not None:
            self.schedule.release(key)
        with self.lock:
            self.report.failed[key] = reason
            self.report.note(key)
            self.save()

    def save(self) -> None:
        """Write this process's report now; a full disk is logged, not raised."""
        # The report is kept current for people watching a long run; a full disk must not turn
        # a finished bag into a failure, nor hide the error that stops the run. The report is
        # saved again when the run ends.
        try:
            self.report.save_part()
        except StorageError as exc:
            logger.warning("Could not update this process's run report: %s", exc)

    def close(self, board: ClaimBoard | None = None) -> None:
        """Fold this process's manifest journal into ``bags_manifest.json``, mark its report
        finished and merge the run's ``run_report.json``."""
        integrity.compact_manifest(self.writer.outdir)
        self.report.save_part(finished=True)
        live = board.live_claims() if board is not None else None
        write_run_report(self.report.outdir, self.report.owner.get("token"), live)


def _seconds_since(claim: Any) -> float | None:
    return None if claim is None else round(time.time() - claim.taken, 3)


def build_extractor_for_run(
    extractor: Any,
    tile_px: int,
    weights: Any = None,
    device: Any = None,
    precision: str | None = None,
    compile: bool = False,
) -> Any:
    """``extractor`` built with its defaults when given by name or saved-model folder (a
    model that needs ``tile_px``, such as an ImageNet CNN, gets the dataset's); ``weights``,
    ``device``, ``precision`` and ``compile`` as in :func:`histobag.build_feature_extractor`
    (``None``/False: the defaults)."""
    if not isinstance(extractor, str):
        return extractor
    given = {"weights": weights, "device": device, "precision": precision}
    kwargs: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if compile:
        kwargs["compile"] = True
    if not is_saved_model(extractor) and "tile_px" in extractor_info(extractor).required_kwargs:
        kwargs["tile_px"] = tile_px
    return build_feature_extractor(extractor, **kwargs)


def build_normalizer_for_run(normalizer: Any) -> Any:
    """``normalizer`` built with its default fit when given by name."""
    if normalizer is None or not isinstance(normalizer, str):
        return normalizer
    return build_normalizer({"method": normalizer, "fit": None})


def prepare_bags_folder(
    outdir: Path, config: dict[str, Any], overwrite: bool, board: ClaimBoard | None = None
) -> None:
    """Refuse to mix configurations; on ``overwrite`` remove the old bags.

    With ``board`` (the run's claims), temporaries of other processes still at work are left
    alone, and ``overwrite`` is refused while another process is writing into the folder.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    others = board is not None and board.others_active()
    # An interrupted run's temporaries go; those of live processes sharing the folder stay.
    remove_stale_temporaries(outdir, older_than=board.timeout if others else None)
    if board is not None:  # claims being written live for milliseconds: older ones are debris
        remove_stale_temporaries(board.folder, older_than=board.timeout)
        remove_stale_temporaries(board.failed_folder, older_than=board.timeout)
    existing = outdir / CONFIG_NAME
    if existing.exists():
        old = read_config(existing)
        diff = differences(old, config)
        if diff and not overwrite:
            raise ConfigError(
                f"{outdir} already holds bags made with a different configuration:\n  "
                + "\n  ".join(diff)
                + _tissue_hint(old, config)
                + "\nUse another outdir, or pass overwrite=True to replace those bags."
            )
        if diff and others:
            raise ConfigError(
                f"{outdir} holds bags of another configuration and other processes are "
                "writing into it now; overwrite=True would delete their work. Wait for them to "
                "finish (or stop them), then overwrite."
            )
        if diff:
            old_writer = get_writer(old["writer"], outdir)
            for slide in old_writer.slides():
                for path in old_writer.files(slide):
                    path.unlink(missing_ok=True)
            (outdir / REPORT_NAME).unlink(missing_ok=True)
            shutil.rmtree(outdir / PARTS_DIR, ignore_errors=True)
            integrity.remove_manifest(outdir)
        if not diff:
            if old["extractor"] != config["extractor"]:
                # The same weights (same sha256) now live at another path: record where.
                old["extractor"] = config["extractor"]
                old.setdefault("provenance", {})["weights_source"] = config["provenance"].get(
                    "weights_source"
                )
                write_json_atomic(existing, old)
            return  # keep the original creation time and versions
    write_json_atomic(existing, config)


def dataset_tissue_record(dataset: Any) -> dict[str, Any] | None:
    """What ``bags_config.json`` records of a dataset's tissue detection: the record a
    :class:`~histobag.dataset.Dataset` resolved once, or that of its ``tissue`` (the default
    detector for a dataset-like object without one)."""
    if hasattr(dataset, "tissue_record"):
        return dataset.tissue_record
    return tissue_record(getattr(dataset, "tissue", DEFAULT_TISSUE_DETECTOR))


def _tissue_hint(old: dict[str, Any], new: dict[str, Any]) -> str:
    """How to resume bags made with another tissue detector (empty if that is not the case)."""
    before, now = fingerprint(old)["tissue"], fingerprint(new)["tissue"]
    if before == now:
        return ""
    name = before.get("name") if isinstance(before, dict) else None
    if name is None:
        return "\nThose bags were made without tissue detection: pass tissue=None (--tissue none)."
    was_default = (
        f" (the default before {DEFAULT_TISSUE_DETECTOR!r})"
        if name == LEGACY_TISSUE_DETECTOR
        else ""
    )
    return (
        f"\nThose bags were made with the {name!r} tissue detector{was_default}: to add to "
        f"them, pass tissue={name!r} (--tissue {name}) with the same settings."
    )


class _Progress:
    """Overall (slides) and per-slide (tiles, tiles/s) progress bars."""

    def __init__(self, total_slides: int | None, enabled: bool, shard: Shard | None = None) -> None:
        from tqdm.auto import tqdm

        self.enabled = enabled
        # One pair of lines per process of a cluster run on this terminal, each at its own
        # place, so the processes' bars do not overwrite each other.
        where = 2 * shard.index if shard is not None else 0
        prefix = f"[{shard.label()}] " if shard is not None else ""
        self.slides = tqdm(
            total=total_slides,
            desc=f"{prefix}slides",
            unit="slide",
            disable=not enabled,
            position=where,
            file=sys.stderr,
        )
        self.prefix = prefix
        self.tiles = tqdm(
            desc=f"{prefix}tiles",
            unit="tile",
            disable=not enabled,
            position=where + 1,
            file=sys.stderr,
        )
        self.current = None

    def tile(self, key: str, n: int) -> None:
        if key != self.current:
            self.current = key
            self.tiles.set_description(f"{self.prefix}tiles ({key})", refresh=False)
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
    tile_transforms: Any = None,
    writer: str = "pt",
    batch_size: int = 32,
    num_workers: int | str = "auto",
    min_tiles: int = 0,
    max_tiles: int = 0,
    overwrite: bool = False,
    source: str = "auto",
    progress: bool = True,
    verify: bool = False,
    shard: Shard | str | None = None,
    claim_timeout: float = DEFAULT_CLAIM_TIMEOUT,
    run_id: str | None = None,
) -> BagRunReport:
    """Write one feature bag per slide of ``dataset`` into ``outdir``.

    Any number of processes, on any number of hosts, may run this on the same ``outdir`` at
    once (``torchrun``, SLURM arrays, plain shells; see ``docs/distributed.md``): each slide is
    claimed before it is extracted (:mod:`histobag.bags.claims`), so every bag is written once;
    the claim of a process that died is taken over after ``claim_timeout`` seconds; each process
    ends when no slide is left to anyone, and ``run_report.json`` then covers the whole run.

    Args:
        extractor: A registered extractor name or a built :class:`FeatureExtractor`.
        dataset: A :class:`histobag.Dataset` (its tile size is used).
        outdir: Bags folder; created if needed.
        normalizer: A stain normalizer name (``"macenko"``...) or object, applied on the device.
        tile_transforms: Registered tile transforms applied in order after the normalizer, on
            the device: a name, ``{"name": ..., "kwargs": {...}}``, or a list of those.
            Recorded in ``bags_config.json``; unknown names fail before any slide is opened.
        writer: ``"pt"`` (slideflow), ``"h5"`` (CLAM/TRIDENT), ``"safetensors"``, or a writer
            registered by a pack.
        batch_size: Tiles per model call: an integer >= 1.
        num_workers: Tile-reading processes (an integer from 0 to 1024), or ``"auto"``.
        min_tiles: Slides with fewer tiles get no bag and are reported.
        max_tiles: If > 0, at most this many tiles per slide, evenly spaced over the slide.
        overwrite: Replace bags made with a different configuration instead of refusing.
        source: ``"slides"`` tiles slides on the fly, ``"tfrecords"`` reads the dataset's
            TFRecords, ``"auto"`` prefers slides and falls back to TFRecords.
        progress: Show progress bars.
        verify: Before skipping a finished bag, re-hash its files and redo it if they changed
            since they were written. Without it a finished bag is redone only when its files'
            sizes differ from ``bags_manifest.json`` (a ``stat``, no reading), or when the
            folder has a manifest that does not record it. See :mod:`histobag.bags.manifest`.
        shard: This process's part of the slides, as a :class:`~histobag.cluster.Shard` or
            ``"i/n"`` (1-based): it starts with its own slides (every n-th), then helps with
            the others' through claims. Also names the process's rank in the report.
        claim_timeout: Seconds without a heartbeat after which another process's claim is
            taken over (its process is presumed dead). Shorter: a dead process's slide is
            redone sooner; longer: a process that stalls (heavy swapping, a frozen network
            mount) keeps its slides.
        run_id: An id shared by the processes of one launch (``histobag extract`` sets it under
            torchrun and in SLURM arrays, :func:`histobag.cluster.run_id`): their reports are
            merged as one run however late one of them starts.

    Returns:
        A :class:`BagRunReport` of what this process did; the whole run's report (every
        process's, merged) is written as ``run_report.json`` in ``outdir``. When no
        slide gives a bag (an empty dataset, or every slide failed) an
        :class:`~histobag.errors.EmptyRunWarning` is issued and recorded in its ``warnings``.

    Raises:
        ArgumentError: An argument is out of range or ``outdir`` is a file or lies under one
            (checked before anything is built or read; see :mod:`histobag.validation`).
        StorageError: ``outdir`` cannot be written (read-only, no permission, no space).
        ConfigError: ``outdir`` holds bags of another configuration and ``overwrite`` is False.
        ExtractorArgumentError: ``extractor`` is a slide encoder (it consumes tile features);
            refused before any slide is opened, naming the tile encoder to use.
    """
    start = time.perf_counter()
    outdir = validation.check_output_dir(outdir)
    batch_size = validation.check_batch_size(batch_size)
    num_workers = validation.check_num_workers(num_workers)
    min_tiles = validation.non_negative_int("min_tiles", min_tiles)
    max_tiles = validation.non_negative_int("max_tiles", max_tiles)
    validation.check_choice("source", source, SOURCES)
    if not isinstance(writer, str):
        raise ArgumentError(f"writer must be a bag writer's name, got {writer!r}.")
    require_tile_encoder(extractor)  # a slide encoder is refused before the dataset is read
    if getattr(dataset, "tile_px", None) is None or getattr(dataset, "tile_um", None) is None:
        raise ConfigError("This dataset has no tile size; pass tile_px= and tile_um=.")
    validation.check_tile_size(dataset.tile_px, dataset.tile_um)
    tile_transforms = resolve_tile_transforms(tile_transforms)  # before a model is built
    extractor = build_extractor_for_run(extractor, dataset.tile_px)
    normalizer = build_normalizer_for_run(normalizer)
    bag_writer = get_writer(writer, outdir)
    config = make_config(
        extractor,
        normalizer,
        tile_px=dataset.tile_px,
        tile_um=dataset.tile_um,
        writer=writer,
        coordinates=bag_writer.coordinates,
        tile_transforms=tile_transforms,
        tissue=dataset_tissue_record(dataset),
        reader=getattr(dataset, "reader", "auto"),
    )
    if isinstance(shard, str):
        shard = parse_shard(shard)
    owner = Owner.current(rank=shard.index if shard else None, run=run_id)
    board = ClaimBoard(outdir, owner, timeout=claim_timeout)
    # Processes started together are one run even if one of them imports and builds its model
    # after the others finished: a process's first run counts from the process's start.
    launched = process_start_time() if not _RUNS_IN_THIS_PROCESS else None
    _RUNS_IN_THIS_PROCESS.append(outdir)
    try:
        prepare_bags_folder(outdir, config, overwrite, board)
        report = BagRunReport(outdir, owner={**dataclasses.asdict(owner), "launched": launched})
        report.save_part()
    except OSError as exc:
        error = storage_error(exc, outdir)
        if error is None:
            raise
        raise error from exc

    all_jobs = slide_jobs(dataset, source, max_tiles)
    jobs = plan_resume(
        bag_writer, all_jobs, report, extractor.num_features, rehash=verify, board=board
    )
    report.save_part()
    low_space = short_of_space(outdir, jobs, extractor.num_features)
    if low_space:
        report.warnings.append(low_space)
        _warn_caller(low_space, LowDiskSpaceWarning)
    schedule = ClaimSchedule(
        jobs, board, bag_writer, extractor.num_features, report, shard=shard, rehash=verify
    )
    bars = _Progress(len(jobs) if shard is None else None, progress, shard)
    sink = BagSink(bag_writer, report, min_tiles, on_slide=bars.slide, schedule=schedule)
    board.touch = [report.part_path()]  # the heartbeat also shows this process is alive
    try:
        with board:
            run(
                extractor,
                jobs,
                sink,
                batch_size=batch_size,
                num_workers=num_workers,
                normalizer=normalizer,
                tile_transforms=tile_transforms,
                spill_dir=outdir,
                progress=bars.tile,
                schedule=schedule,
            )
        if not report.done and not report.skipped and not report.skipped_elsewhere:
            message = _empty_run_message(all_jobs, report)
            report.warnings.append(message)
            _warn_caller(message, EmptyRunWarning)
    except BaseException:
        report.seconds = time.perf_counter() - start
        try:  # best effort: the error that stopped the run is what the user must see
            sink.close(board)
        except Exception as exc:
            logger.warning("Could not write %s: %s", REPORT_NAME, exc)
        raise
    finally:
        bars.close()
    report.seconds = time.perf_counter() - start
    sink.close(board)
    return report


def plan_resume(
    bag_writer: BagWriter,
    jobs: list[tuple[str, Job | str]],
    report: BagRunReport,
    num_features: int | None,
    *,
    rehash: bool = False,
    board: ClaimBoard | None = None,
) -> list[Job]:
    """Decide, per slide, whether its finished bag is kept (``report.skipped``), the slide
    cannot be run (``report.failed``), or it is to be extracted (returned).

    A finished bag is kept when its files' sizes (and with ``rehash`` their sha256) match its
    record in ``bags_manifest.json``. A bag that does not match, or has no record, is returned to
    be extracted; it is deleted only once this
    process holds the slide's claim (:class:`~histobag.bags.schedule.ClaimSchedule`), since
    another process may be writing it at this moment. In a folder without a manifest (bags from
    an older histobag) finished bags are kept as before and recorded as they are now. A bag
    that does not match its record and whose slide cannot be extracted (``job`` is a reason) is
    deleted under the slide's claim (taken from ``board``), since a bag exists only whole.
    """
    outdir = bag_writer.outdir
    manifest = integrity.read_manifest(outdir)
    adopt: dict[str, tuple[list[Path], int]] = {}
    runnable: list[Job] = []
    for key, job in jobs:
        files = bag_writer.files(key)
        problem, tiles = None, None
        if manifest is not None and key in manifest:
            # A recorded bag is checked against its record (sizes; sha256 with rehash), not
            # read: a resumed cohort run costs a stat per bag, not a read of every bag.
            problem = integrity.bag_problem(outdir, manifest[key], files, rehash=rehash)
            if problem is None:
                tiles = int(manifest[key]["tiles"])
        elif manifest is not None:
            if any(p.exists() for p in files):
                problem = integrity.bag_problem(outdir, None, files)
        elif bag_writer.is_complete(key, num_features):  # a folder from before manifests
            tiles = len(bag_writer.read(key)[0])
            adopt[key] = (files, tiles)
        if tiles is not None:
            report.skipped[key] = tiles
            report.note(key)
        elif isinstance(job, str):
            report.failed[key] = job
            report.note(key)
            if problem is not None:
                _remove_damaged(key, files, problem, report, board)
        else:
            runnable.append(job)
    integrity.record_bags(outdir, adopt, adopted=True)
    return runnable


def _remove_damaged(
    key: str, files: list[Path], problem: str, report: BagRunReport, board: ClaimBoard | None
) -> None:
    """Delete a bag that does not match its record, holding its claim when there is a board."""
    claim = board.claim(key) if board is not None else None
    if board is not None and claim is None:
        return  # another process holds the slide: it decides
    try:
        report.redone[key] = problem
        report.note(key)
        logger.warning("Removing the bag of %s: %s", key, problem)
        for path in files:
            path.unlink(missing_ok=True)
    finally:
        if claim is not None:
            board.release(claim)  # type: ignore[union-attr]


def _warn_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` pointing at the first caller outside histobag (the user's line)."""
    package = str(Path(__file__).parents[1]) + os.sep  # the histobag package
    frame, level = sys._getframe(0), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _empty_run_message(jobs: list[tuple[str, Job | str]], report: BagRunReport) -> str:
    if not jobs:
        return (
            f"The dataset has no slides, so no bag was written to {report.outdir}. Check the "
            "slide folder (searched recursively for slide files: .svs, .tif, .ndpi, .mrxs...), "
            "that the annotations' 'slide' column names the slide files (without suffix), "
            "and the filters."
        )
    return (
        f"No bag was written to {report.outdir}: all {len(report.failed)} slides failed (see "
        f"{report.outdir / REPORT_NAME})."
    )


def slide_jobs(dataset: Any, source: str, max_tiles: int) -> list[tuple[str, Job | str]]:
    """(bag name, job or failure reason) for every slide of the dataset."""
    validation.check_choice("source", source, SOURCES)
    slide_paths = {source_stem(p): as_source(p) for p in dataset.slide_paths()}
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
    return float(tile_microns(dataset.tile_px, dataset.tile_um))


def _extent(slide_path: Path | None, dataset: Any) -> tuple[int, float | None]:
    """Level-0 tile extent and mpp for a TFRecord whose slide is available, else (0, None)."""
    if slide_path is None:
        return 0, None
    try:
        wsi = WSI(slide_path, dataset.tile_px, dataset.tile_um, tissue=None)
        return int(wsi.full_extract_px), float(wsi.mpp)
    except HistobagError:
        return 0, None


__all__ = ["BagRunReport", "generate_feature_bags"]
