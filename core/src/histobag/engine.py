"""The one streaming loop that runs a model over tiles (DESIGN principle 2).

Every path that extracts features (a WSI grid, a TFRecord, dataset bags, ``DatasetFeatures``)
goes through :func:`run`:

- the **main process plans** each slide once, shortly before it is read (:class:`JobOrder`:
  the slide's grid and tissue detection), and sends the plan to the readers;
- **worker processes** (started as :mod:`histobag.worker_start` says) open each planned slide
  themselves, read and decode tiles in batches (a ``torch.utils.data.DataLoader`` over an
  iterable stream, batches shared round-robin between workers), and move on to the next slide
  while the model finishes the last, so the model does not idle between slides. On a CPU with
  few cores the same stream is read in the main process between batches instead
  (:func:`auto_workers` says why);
- the **main thread** moves each batch to the device (pinned memory, non-blocking copies on
  CUDA), applies the stain normalizer, the tile transforms (in order; see
  :mod:`histobag.tile_transforms`) and the extractor's preprocessing there, runs the model
  under autocast and ``inference_mode``, never waiting for its output: the features come back
  to the writer thread (:mod:`histobag.device_results`), so the next batch is queued on the
  device meanwhile;
- a **writer thread** waits for each batch's features, fails a slide whose features hold NaN
  or infinity, assembles each slide's features (spilled to a file when a folder is given) and
  hands finished slides to a sink (bag writer, in-memory collector...).

Memory is bounded by batch size × queue depth (plus one feature row per tile of the slides in
flight), never by the size of a slide's pixels; free heap memory is handed back to the OS as
batches go by (:mod:`histobag.heap`).
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.utils.data

from histobag.assembly import FeatureRows, TileLedger
from histobag.device_results import FeaturesInFlight, non_finite_rows
from histobag.errors import (
    HistobagError,
    NonFiniteFeaturesError,
    StorageError,
    TileAccountingError,
    TileTransformError,
)
from histobag.files import TMP_PREFIX, storage_error
from histobag.geometry import TileGeometry
from histobag.heap import HeapTrimmer
from histobag.tile_readers import plan_opener
from histobag.tile_transforms import TileTransform, apply_tile_transforms
from histobag.validation import check_batch_size, check_num_workers, positive_int
from histobag.worker_start import check_importable, shared_memory_error, worker_context

if TYPE_CHECKING:
    from histobag.extractors.base import FeatureExtractor


class TileReader(Protocol):
    """What the engine reads tiles from (a :class:`~histobag.slide.WSI`, a TFRecord...)."""

    def __len__(self) -> int:
        """Number of tiles."""

    def read_tiles(self, indices: Sequence[int], *, return_mask: bool = False) -> Any:
        """uint8 (n, px, px, 3), and with ``return_mask`` a bool (n,) of tiles to keep."""


@dataclass(frozen=True)
class Job:
    """One slide (or TFRecord) to extract.

    Attributes:
        key: Output name of the slide (already sanitised for file names).
        open: Picklable callable returning ``(source, top_left (N, 2), geometry)``; called in
            the worker processes, each of which opens its own handle.
    """

    key: str
    open: Callable[[], tuple[TileReader, np.ndarray, TileGeometry]]


@dataclass
class SlideResult:
    """A finished slide: features of the kept tiles and where they are."""

    key: str
    features: np.ndarray  # (n_kept, F) float32
    top_left: np.ndarray  # (n_kept, 2) int64, level 0
    geometry: TileGeometry
    kept: np.ndarray  # (n_tiles,) bool: which of the source's tiles passed the pixel filters
    grid_index: np.ndarray | None = None


class Sink(Protocol):
    """Receives results; called from the writer thread."""

    def finish(self, result: SlideResult) -> None:
        """A slide's features are complete."""

    def fail(self, key: str, reason: str) -> None:
        """A slide could not be extracted."""


class AbandoningSink(Sink, Protocol):
    """A sink that also hears of slides cut short when a run stops (interrupted, out of disk
    space): they did not fail by themselves. A :class:`Sink` without ``abandon`` gets them
    through ``fail``."""

    def abandon(self, key: str, reason: str) -> None:
        """The run stopped before the slide was finished."""


class Schedule(Protocol):
    """Decides, while a run goes on, which job comes next (see :func:`run`).

    Used to hand slides out one at a time where several processes share the work (slide
    claims, :mod:`histobag.bags.claims`): a job is decided only when the run is about to start
    reading it.
    """

    def next_job(self, stop: threading.Event) -> int | None:
        """The index of the next job to run, or None when there is none left. May block
        (waiting for other processes); returns None soon after ``stop`` is set."""


def describe_error(exc: BaseException) -> str:
    """One line for a run report: histobag errors as they are, others with their type."""
    if isinstance(exc, HistobagError):
        return str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


class JobOrder:
    """Which job the readers take next, decided and planned in the main process as the run goes.

    A thread takes the next job (from the :class:`Schedule`, else in order) whenever fewer than
    ``lookahead`` decided slides are unfinished, plans it (:func:`~histobag.tile_readers.
    plan_opener`: a slide's grid and tissue detection, once per slide and not once per reading
    worker) and sends ``(job, opener)`` to every reader's channel, then ``None`` after the last.
    So a slide is decided (e.g. claimed) only shortly before it is read, and the next one is
    ready when the last batch of the previous one is read. A slide whose planning fails is
    reported through ``fail`` and never sent.
    """

    def __init__(
        self,
        jobs: Sequence[Job],
        schedule: Schedule | None,
        lookahead: int,
        channels: Sequence[Any],
        fail: Callable[[int, str], None],
    ) -> None:
        self.jobs = jobs
        self.schedule = schedule
        self.lookahead = lookahead
        self.channels = list(channels)
        self.fail = fail
        self.admitted: list[int] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self._unfinished = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start deciding and planning jobs."""
        self._thread = threading.Thread(target=self._decide, name="histobag-jobs", daemon=True)
        self._thread.start()

    def _next(self) -> int | None:
        if self.schedule is not None:
            return self.schedule.next_job(self.stop)
        return len(self.admitted) if len(self.admitted) < len(self.jobs) else None

    def _decide(self) -> None:
        try:
            while len(self.admitted) < len(self.jobs):
                with self._changed:
                    self._changed.wait_for(
                        lambda: self._unfinished < self.lookahead or self.stop.is_set()
                    )
                if self.stop.is_set():
                    break
                j = self._next()
                if j is None or self.stop.is_set():
                    break
                with self._changed:
                    self._unfinished += 1
                    self.admitted.append(j)
                try:
                    opener = plan_opener(self.jobs[j].open)
                except Exception as exc:  # a bad slide is reported, the run goes on
                    self.fail(j, describe_error(exc))
                    continue
                for channel in self.channels:
                    channel.put((j, opener))
        except BaseException as exc:  # raised by run() once the readers have stopped
            self.error = exc
        finally:
            for channel in self.channels:
                channel.put(None)

    def finished(self, j: int) -> None:
        """Job ``j`` is done (or failed): the next one may be decided."""
        with self._changed:
            self._unfinished -= 1
            self._changed.notify_all()

    def close(self) -> None:
        """Stop deciding; readers waiting for a decision see the end."""
        self.stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for channel in self.channels:
            # Plans a stopped run's workers never read must not keep this process from
            # exiting (a process queue's feeder thread is joined at exit).
            cancel = getattr(channel, "cancel_join_thread", None)
            if cancel is not None:
                cancel()
                channel.close()


# ------------------------------------------------------------------------------------------
# Worker side: the tile stream
# ------------------------------------------------------------------------------------------


#: How often a reader waiting for the next planned job checks that the main process lives.
_CHANNEL_POLL_SECONDS = 1.0


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode tiles; the main process owns the cores' math


class TileStream(torch.utils.data.IterableDataset):
    """Iterable over the items of a run, split round-robin between DataLoader workers.

    Each reader (worker, or the main process reading inline) takes the planned jobs from its
    own channel of the :class:`JobOrder`, in the order decided there: ``(job, opener)``, then
    ``None`` at the end.
    Items: ``("start", job, n_tiles, top_left, geometry, grid_index)`` (from the first worker),
    ``("batch", job, kept indices, tiles uint8 (b, px, px, 3), filtered indices)`` and
    ``("error", job, reason)``. Across a slide's batches from every worker, each tile index
    appears exactly once, either with its pixels (kept) or as filtered out.
    """

    def __init__(self, jobs: Sequence[Job], batch_size: int, channels: Sequence[Any]) -> None:
        self.keys = [job.key for job in jobs]
        self.batch_size = batch_size
        self.channels = list(channels)

    def _planned_jobs(self, worker: int) -> Iterator[tuple[int, Callable[[], Any]]]:
        """The jobs this reader gets, as the main process plans them; stops early if the main
        process is gone."""
        channel = self.channels[worker]
        parent = os.getppid()
        while True:
            try:
                item = channel.get(timeout=_CHANNEL_POLL_SECONDS)
            except queue.Empty:
                if os.getppid() != parent:  # the main process is gone: stop reading
                    return
                continue
            if item is None:
                return
            yield item

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        counter = 0  # global chunk number, for round-robin assignment across slides
        for j, opener in self._planned_jobs(worker):
            try:
                source, top_left, geometry = opener()
                n = len(source)
            except Exception as exc:  # a bad slide is reported, the run goes on
                # Every worker reports: one that fails to open a slide that another opened
                # would otherwise leave that slide's chunks unread.
                yield ("error", j, describe_error(exc))
                continue
            n_chunks = math.ceil(n / self.batch_size)
            if worker == 0:
                yield ("start", j, n, top_left, geometry, getattr(source, "grid_index", None))
            mine = [c for c in range(n_chunks) if (counter + c) % workers == worker]
            counter += n_chunks
            try:
                yield from self._slide_batches(j, source, mine)
            except Exception as exc:
                yield ("error", j, describe_error(exc))
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def _slide_batches(
        self, j: int, source: TileReader, chunks: list[int]
    ) -> Iterator[tuple[Any, ...]]:
        """Read ``chunks`` of a slide, drop tiles failing the pixel filters, and yield full
        batches of kept tiles, each with the indices filtered out since the previous one.

        Filtering before batching keeps the model fed with full batches of tissue only. A
        kept tile is reported only with its pixels and a filtered one only once, so the writer
        can account for every tile index exactly once.
        """
        size = self.batch_size
        kept_idx: list[np.ndarray] = []
        kept_tiles: list[np.ndarray] = []
        filtered: list[np.ndarray] = []
        buffered = 0
        for c in chunks:
            idx = np.arange(c * size, min(len(source), (c + 1) * size))
            tiles, kept = _read_chunk(self.keys[j], source, idx)
            filtered.append(idx[~kept])
            if kept.any():
                kept_idx.append(idx[kept])
                kept_tiles.append(tiles[kept])
                buffered += int(kept.sum())
            while buffered >= size:
                all_idx, all_tiles = np.concatenate(kept_idx), np.concatenate(kept_tiles)
                yield (
                    "batch",
                    j,
                    all_idx[:size],
                    torch.from_numpy(all_tiles[:size]),
                    np.concatenate(filtered),
                )
                kept_idx, kept_tiles, filtered = [all_idx[size:]], [all_tiles[size:]], []
                buffered -= size
        rest_filtered = np.concatenate(filtered) if filtered else np.zeros(0, np.int64)
        if buffered or len(rest_filtered):
            all_idx = np.concatenate(kept_idx) if buffered else np.zeros(0, np.int64)
            tiles = np.concatenate(kept_tiles) if buffered else np.zeros((0, 1, 1, 3), np.uint8)
            yield ("batch", j, all_idx, torch.from_numpy(tiles), rest_filtered)


def _read_chunk(key: str, source: TileReader, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tiles and keep-mask of ``idx``, checked to be one tile and one flag per index."""
    tiles, kept = source.read_tiles(idx, return_mask=True)
    tiles, kept = np.asarray(tiles), np.asarray(kept)
    if len(tiles) != len(idx) or kept.shape != (len(idx),) or kept.dtype != bool:
        raise TileAccountingError(
            f"{key}: asked the tile source for {len(idx)} tiles, got {len(tiles)} tiles and "
            f"a mask of shape {kept.shape} ({kept.dtype}); no bag was written."
        )
    return tiles, kept


# ------------------------------------------------------------------------------------------
# Writer side: per-slide assembly
# ------------------------------------------------------------------------------------------


@dataclass
class _Assembly:
    ledger: TileLedger
    rows: FeatureRows
    top_left: np.ndarray
    geometry: TileGeometry
    grid_index: np.ndarray | None


class _Writer(threading.Thread):
    """Assembles slides from batches and hands finished ones to the sink.

    A slide is finished when its :class:`~histobag.assembly.TileLedger` has accounted for every
    tile. A problem with one slide fails that slide; a :class:`StorageError` (full disk,
    read-only folder) fails it and stops the run, since every later slide would fail the same
    way.
    """

    def __init__(
        self,
        jobs: Sequence[Job],
        sink: Sink,
        spill_dir: Path | None,
        depth: int,
        n_features: int | None,
        job_order: JobOrder,
    ) -> None:
        super().__init__(name="histobag-writer", daemon=True)
        self.jobs = jobs
        self.job_order = job_order
        self.n_features = n_features
        self.sink = sink
        self.spill_dir = spill_dir
        self.queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=depth)
        self.slides: dict[int, _Assembly] = {}
        self.early: dict[int, list[tuple[Any, ...]]] = {}
        self.done: set[int] = set()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                if self.error is None:
                    self._handle(item)
        except BaseException as exc:  # surfaced by the main thread
            self.error = exc
            traceback.print_exc()
            while self.queue.get() is not None:  # keep draining so the producer never blocks
                pass

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind, j = item[0], item[1]
        if j in self.done:
            return
        if kind == "error":
            self._fail(j, item[2])
            return
        try:
            if kind == "start":
                self._start(j, *item[2:])
            elif j not in self.slides:
                self.early.setdefault(j, []).append(item)
                return
            else:
                self._add(j, item)
            self._maybe_finish(j)
        except StorageError as exc:
            self._fail(j, describe_error(exc))
            self.error = exc  # stops the run: the next slides would fail the same way
        except Exception as exc:  # this slide fails; the run goes on
            self._fail(j, describe_error(exc))

    def _start(
        self,
        j: int,
        n: int,
        top_left: np.ndarray,
        geometry: TileGeometry,
        grid_index: np.ndarray | None,
    ) -> None:
        spill = None
        if self.spill_dir is not None:
            try:
                fd, name = tempfile.mkstemp(
                    prefix=TMP_PREFIX, suffix=".features", dir=self.spill_dir
                )
            except OSError as exc:
                raise storage_error(exc, self.spill_dir) or exc from exc
            os.close(fd)
            spill = Path(name)
        self.slides[j] = _Assembly(
            TileLedger(self.jobs[j].key, n),
            FeatureRows(n, spill, self.n_features),
            np.asarray(top_left, dtype=np.int64).reshape(-1, 2),
            geometry,
            grid_index,
        )
        if len(self.slides[j].top_left) != n:
            raise TileAccountingError(
                f"{self.jobs[j].key}: the tile source has {n} tiles but "
                f"{len(self.slides[j].top_left)} coordinates; no bag was written."
            )
        for early in self.early.pop(j, []):
            self._add(j, early)

    def _add(self, j: int, item: tuple[Any, ...]) -> None:
        _, _, kept, features, filtered = item
        slide = self.slides[j]
        slide.ledger.filtered_out(filtered)
        if not len(kept):
            return
        if isinstance(features, FeaturesInFlight):
            features = features.numpy()  # waits for the device here, not in the main thread
        bad = non_finite_rows(features)
        if len(bad):
            tiles = kept[bad]
            raise NonFiniteFeaturesError(
                f"{self.jobs[j].key}: the model returned NaN or infinite features for "
                f"{len(tiles)} tiles (tile indices {tiles[:8].tolist()}"
                f"{', ...' if len(tiles) > 8 else ''}); no bag was written. In fp16 a model "
                "can overflow: try precision='bf16' or 'fp32' (--precision)."
            )
        slide.ledger.delivered(kept)
        try:
            slide.rows.put(kept, features)
        except OSError as exc:
            needed = slide.ledger.n_tiles * np.asarray(features).shape[-1] * 4
            raise storage_error(exc, self.spill_dir or ".", needed) or exc from exc

    def _maybe_finish(self, j: int) -> None:
        slide = self.slides[j]
        if not slide.ledger.complete:
            return
        keep = slide.ledger.kept
        result = SlideResult(
            key=self.jobs[j].key,
            features=slide.rows.take(keep),
            top_left=slide.top_left[keep],
            geometry=slide.geometry,
            kept=keep.copy(),
            grid_index=None if slide.grid_index is None else slide.grid_index[keep],
        )
        self._release(j)
        self.sink.finish(result)

    def _fail(self, j: int, reason: str) -> None:
        self.early.pop(j, None)
        if j in self.slides:
            self._release(j)
        elif j not in self.done:
            self.done.add(j)
            self.job_order.finished(j)
        self.sink.fail(self.jobs[j].key, reason)

    def _release(self, j: int) -> None:
        self.slides.pop(j).rows.close()
        self.done.add(j)
        self.job_order.finished(j)

    def unfinished(self) -> dict[int, str]:
        """Jobs that never completed (e.g. a worker died), with what is known of why."""
        out = {}
        for j in list(self.job_order.admitted):
            if j in self.done:
                continue
            slide = self.slides.get(j)
            if slide is None:
                out[j] = "no tiles were produced (the slide could not be read)"
            else:
                missing = slide.ledger.missing()
                out[j] = (
                    f"{len(missing)} of {slide.ledger.n_tiles} tiles were never read "
                    f"(first: {missing[:8].tolist()}); no bag was written"
                )
        return out

    def close(self) -> None:
        """Remove the spill files of slides still in flight."""
        for j in list(self.slides):
            self._release(j)


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------


#: On a CPU with at most this many cores, tiles are read in the main process between batches.
INLINE_READING_MAX_CORES = 4


def auto_workers(device: torch.device) -> int:
    """Tile-reading processes for ``num_workers="auto"``.

    On accelerators, one per host core but one (up to 8): the host cores are otherwise idle.
    On a CPU the model's threads already use every core, and a reading process that preempts
    one of them stalls the others at their next synchronisation point: measured on 2 cores
    (ResNet-50, batch 32), a reading worker slowed each forward pass by about 4%, more than its
    own CPU time, while reading the same tiles in the main process between forward passes costs
    only that CPU time. So small CPUs read inline (0 workers); larger ones keep a worker per
    4 cores (up to 4), where reading inline would leave more cores idle.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if device.type == "cpu":
        return 0 if cores <= INLINE_READING_MAX_CORES else min(4, cores // 4)
    return max(1, min(8, cores - 1))


def run(
    extractor: FeatureExtractor,
    jobs: Sequence[Job],
    sink: Sink,
    *,
    batch_size: int = 32,
    num_workers: int | str = "auto",
    normalizer: Any = None,
    tile_transforms: Sequence[TileTransform] = (),
    spill_dir: str | os.PathLike[str] | None = None,
    queue_depth: int = 4,
    progress: Any = None,
    schedule: Schedule | None = None,
    lookahead: int = 2,
) -> None:
    """Extract features for every job and pass each finished slide to ``sink``.

    Args:
        extractor: The feature extractor (its device decides where the model runs).
        jobs: Slides to process, in order.
        sink: Receives each finished slide (or its failure), from a writer thread.
        batch_size: Tiles per model call.
        num_workers: Tile-reading processes, or ``"auto"``; 0 reads in the main process.
        normalizer: A stain normalizer applied on the device before preprocessing.
        tile_transforms: Built tile transforms (:func:`resolve_tile_transforms`), applied in
            order on the device after the stain normalizer and before preprocessing. A
            transform that raises or breaks its contract fails that slide, naming it.
        spill_dir: Folder for the per-slide feature buffers (spill files), else in memory.
        queue_depth: Batches prefetched per worker, and results queued for the writer.
        progress: Optional callback ``progress(job_key, n_tiles)`` after each batch, with the
            number of tiles it accounted for (kept or filtered out).
        schedule: Decides which job comes next while the run goes on (each job at most once);
            jobs it never returns are not run. ``None``: every job, in order.
        lookahead: How many decided slides may be unfinished at a time: the one at the model
            and the next ones being read (and planned). Without a schedule, at least twice the
            number of readers, so that every reader has chunks to read.

    Raises:
        ArgumentError: ``batch_size``, ``num_workers`` or ``queue_depth`` is out of range.
        StorageError: The spill folder or the sink's output folder ran out of space (or is
            read-only); the slide in flight is reported failed, nothing partial is left.
    """
    batch_size = check_batch_size(batch_size)
    num_workers = check_num_workers(num_workers)
    queue_depth = positive_int("queue_depth", queue_depth)
    lookahead = positive_int("lookahead", lookahead)
    if not jobs:
        return
    device = extractor.device
    workers = auto_workers(device) if num_workers == "auto" else num_workers
    context = worker_context(device) if workers else None
    if context is not None:
        check_importable((job.open for job in jobs), context)
    # One channel per reader; a worker's channel must come from the context that starts it.
    channels = [context.Queue() for _ in range(workers)] if context else [queue.Queue()]
    # Without a schedule, plan enough slides ahead that every reader has chunks to read.
    ahead = lookahead if schedule is not None else max(lookahead, 2 * len(channels))
    job_order = JobOrder(
        jobs, schedule, ahead, channels, fail=lambda j, why: writer.queue.put(("error", j, why))
    )
    loader = torch.utils.data.DataLoader(
        TileStream(jobs, batch_size, channels),
        batch_size=None,
        collate_fn=_as_read,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=queue_depth if workers else None,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
        multiprocessing_context=context,
    )
    writer = _Writer(
        jobs,
        sink,
        Path(spill_dir) if spill_dir else None,
        depth=queue_depth * max(1, workers) + 2,
        n_features=_declared_features(extractor),
        job_order=job_order,
    )
    writer.start()
    model_loop = _ModelLoop(extractor, jobs, writer, normalizer, tile_transforms, progress)
    try:
        # The DataLoader's pinning thread pins for the current device: make it the model's.
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            items = iter(loader)  # forks the workers (if forking) before any planning thread
            job_order.start()  # runs: a fork amid its slide opening could copy a held lock
            for item in items:
                if writer.error is not None:
                    break
                model_loop.take(item)
    except BaseException as exc:
        # A worker died (a library crash on a corrupt file, no shared memory left), or the
        # user interrupted.
        _stop(writer, sink, f"extraction stopped: {describe_error(exc)}")
        shm = shared_memory_error(exc, workers, _exit_codes(locals().get("items")))
        if shm is not None:
            raise shm from exc
        raise
    # The writer may still hold the last slides' batches: a full disk writing the last bag
    # must stop the run like one in the middle of it, so its error is read once it is done.
    _finish_writing(writer)
    error = writer.error or job_order.error
    if error is not None:
        _stop(writer, sink, f"run stopped: {describe_error(error)}")
        raise error
    _stop(writer, sink, None)


def _exit_codes(items: Any) -> list[int | None]:
    """Exit codes of a DataLoader iterator's workers (a private attribute: none if it moved)."""
    return [getattr(w, "exitcode", None) for w in getattr(items, "_workers", ())]


def _as_read(item: tuple[Any, ...]) -> tuple[Any, ...]:
    """The DataLoader's per-item step: items as the readers made them. Its default would turn
    every array (tile indices, coordinates) into a tensor, and pin each one on CUDA; only the
    tiles are tensors, so only they are pinned."""
    return item


class _ModelLoop:
    """The main thread's work on each item: run the model on batches, never waiting for it.

    A batch's features go to the writer as a :class:`~histobag.device_results.FeaturesInFlight`
    (on CUDA a non-blocking copy into pinned memory, with an event): the writer thread waits for
    the copy, so the main thread queues the next batch while the device computes this one.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        jobs: Sequence[Job],
        writer: _Writer,
        normalizer: Any,
        tile_transforms: Sequence[TileTransform],
        progress: Any,
    ) -> None:
        self.extractor = extractor
        self.jobs = jobs
        self.writer = writer
        self.normalizer = normalizer
        self.transforms = tuple(tile_transforms)
        self.progress = progress
        self.trim_heap = HeapTrimmer()
        self.failed: set[int] = set()  # slides a tile transform failed: later batches skipped

    def take(self, item: tuple[Any, ...]) -> None:
        """Handle one item of the tile stream."""
        if item[0] != "batch":
            self.writer.queue.put(item)
            return
        _, j, kept, tiles, filtered = item
        features = None
        if len(kept) and j not in self.failed:
            try:
                batch = _to_device_batch(
                    tiles, self.extractor.device, self.normalizer, self.transforms
                )
            except TileTransformError as exc:  # that slide fails; the run goes on
                self.failed.add(j)
                self.writer.queue.put(("error", j, describe_error(exc)))
            else:
                features = FeaturesInFlight(self.extractor.forward_batch(batch))
                self.trim_heap()
        if j not in self.failed:
            self.writer.queue.put(("batch", j, kept, features, filtered))
        if self.progress is not None:
            self.progress(self.jobs[j].key, len(kept) + len(filtered))


def _finish_writing(writer: _Writer) -> None:
    """Stop deciding jobs and let the writer finish what it was given (once; idempotent)."""
    writer.job_order.close()
    if writer.is_alive():
        writer.queue.put(None)
        writer.join()


def _stop(writer: _Writer, sink: Sink, reason: str | None) -> None:
    """Stop deciding jobs, let the writer finish, fail every slide it did not finish, and
    remove spill files."""
    _finish_writing(writer)
    # Slides cut short by a stopped run did not fail by themselves: a sink that tells the two
    # apart (slide claims: another process may do them) gets them as abandoned.
    abandon = getattr(sink, "abandon", sink.fail) if reason is not None else sink.fail
    try:
        for j, why in writer.unfinished().items():
            if reason is None:
                sink.fail(writer.jobs[j].key, why)
            else:
                abandon(writer.jobs[j].key, reason)
    finally:
        writer.close()


def _declared_features(extractor: FeatureExtractor) -> int | None:
    """The extractor's feature width if it declares one (it shapes slides without tiles)."""
    try:
        return int(extractor.num_features)
    except HistobagError:
        return None


def _to_device_batch(
    tiles: torch.Tensor,
    device: torch.device,
    normalizer: Any,
    tile_transforms: Sequence[TileTransform] = (),
) -> torch.Tensor:
    """uint8 (b, px, px, 3) → uint8 (b, 3, H, W) on the device: stain-normalised, then
    tile-transformed in order (H, W are px unless a transform changes them).

    A normalizer that computes on the host (``runs_on_host``, e.g. scikit-learn's Vahadane)
    normalises the tiles before they are copied, rather than after a round trip.

    Raises:
        TileTransformError: A tile transform raised or broke its contract.
    """
    batch = tiles.permute(0, 3, 1, 2)
    on_host = normalizer is not None and getattr(normalizer, "runs_on_host", False)
    if on_host:
        batch = normalizer.transform(batch)
    batch = batch.to(device, non_blocking=device.type == "cuda")
    if normalizer is not None and not on_host:
        batch = normalizer.transform(batch)
    return apply_tile_transforms(batch, tile_transforms)


# ------------------------------------------------------------------------------------------
# Sinks
# ------------------------------------------------------------------------------------------


class CollectSink:
    """Keeps finished slides in memory (``results``) and failures (``failures``)."""

    def __init__(self) -> None:
        self.results: dict[str, SlideResult] = {}
        self.failures: dict[str, str] = {}

    def finish(self, result: SlideResult) -> None:
        """Store the result."""
        self.results[result.key] = result

    def fail(self, key: str, reason: str) -> None:
        """Store the failure."""
        self.failures[key] = reason

    def single(self, key: str) -> SlideResult:
        """The result for ``key``, or the failure as an exception."""
        if key in self.failures:
            raise HistobagError(f"Feature extraction failed for {key}: {self.failures[key]}")
        return self.results[key]
