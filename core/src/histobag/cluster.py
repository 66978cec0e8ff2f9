"""Where this process stands in a cluster run: its torchrun rank, its SLURM array task, its share.

histobag needs no coordinator of its own: processes share the work through slide claims on the
output folder (:mod:`histobag.bags.claims`). This module reads what the launcher tells each
process, so that it picks its own device and starts on its own part of the slides:

- ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``
  (:func:`torchrun_launch`); rank ``r`` runs on ``cuda:LOCAL_RANK`` and, on a CPU, on its share
  of the cores (:func:`rank_device`, :func:`cpu_threads_per_rank`).
- a SLURM job array sets ``SLURM_ARRAY_TASK_ID``, ``SLURM_ARRAY_TASK_MIN`` and
  ``SLURM_ARRAY_TASK_COUNT`` (:func:`slurm_array_shard`).

A :class:`Shard` orders the slides for one process: its own slides first (every ``count``-th
slide in name order, starting at its ``index``), then the other shards' in turn, starting with
the next shard. Slides of the other shards are taken only where their own process has not
claimed them yet, so a fast or late process helps the others and a dead one's slides are done.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from histobag.errors import ArgumentError

__all__ = [
    "Launch",
    "Shard",
    "cpu_threads_per_rank",
    "limit_cpu_threads",
    "parse_shard",
    "process_start_time",
    "rank_device",
    "run_id",
    "slurm_array_shard",
    "stop_on_sigterm",
    "torchrun_launch",
]


@dataclass(frozen=True)
class Shard:
    """One process's part of the slides: ``index`` (0-based) of ``count``.

    Attributes:
        index: This process's shard, 0 <= index < count.
        count: How many shards (processes) there are.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and self.count >= 1):
            raise ArgumentError(f"A shard count must be an integer >= 1, not {self.count!r}.")
        if not (isinstance(self.index, int) and 0 <= self.index < self.count):
            raise ArgumentError(
                f"Shard index {self.index!r} is out of range for {self.count} shard(s)."
            )

    def order(self, n: int) -> list[int]:
        """Positions ``0..n-1`` in the order this shard visits them: its own (``index``,
        ``index + count``, ...), then each following shard's, wrapping around.

        Example:
            >>> Shard(1, 3).order(8)
            [1, 4, 7, 2, 5, 0, 3, 6]
        """
        out: list[int] = []
        for step in range(self.count):
            shard = (self.index + step) % self.count
            out.extend(range(shard, n, self.count))
        return out

    def label(self) -> str:
        """``i/n`` with a 1-based ``i``, as the command line takes it."""
        return f"{self.index + 1}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"i/n"`` (1-based: ``1/3``, ``2/3``, ``3/3``) → :class:`Shard`.

    Raises:
        ArgumentError: Not of the form ``i/n`` with ``1 <= i <= n``.
    """
    index, sep, count = str(text).partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise ArgumentError(f"--shard must look like 2/8 (shard 2 of 8), not {text!r}.")
    i, n = int(index), int(count)
    if not 1 <= i <= n:
        raise ArgumentError(f"--shard {text}: the shard must be between 1 and {n}.")
    return Shard(i - 1, n)


def slurm_array_shard(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of this SLURM array task, or None outside a job array.

    ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``, so
    ``--array=0-7`` and ``--array=1-8`` both give shards 0..7 of 8. An array with a step
    (``--array=0-14:2``) is numbered by position.

    Raises:
        ArgumentError: The variables are set but inconsistent.
    """
    env = os.environ if environ is None else environ
    task, count = env.get("SLURM_ARRAY_TASK_ID"), env.get("SLURM_ARRAY_TASK_COUNT")
    if task is None or count is None:
        return None
    try:
        task_id, n = int(task), int(count)
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        step = int(env.get("SLURM_ARRAY_TASK_STEP", "1")) or 1
    except ValueError:
        raise ArgumentError(
            f"SLURM_ARRAY_TASK_ID={task!r} / SLURM_ARRAY_TASK_COUNT={count!r} are not integers; "
            "pass --shard i/n instead."
        ) from None
    return Shard((task_id - first) // step, n)


@dataclass(frozen=True)
class Launch:
    """What ``torchrun`` (or any ``torch.distributed`` launcher) told this process.

    Attributes:
        rank: Global rank.
        world_size: Number of processes in the whole run.
        local_rank: Rank on this node (the GPU to use).
        local_world_size: Number of processes on this node.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def shard(self) -> Shard:
        """The rank's share of the slides."""
        return Shard(self.rank, self.world_size)


def torchrun_launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The place of this process in a ``torchrun`` launch, or None when not launched so.

    Raises:
        ArgumentError: The launcher's variables are inconsistent.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise ArgumentError(
            "RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers (as torchrun "
            "sets them)."
        ) from None
    if not (0 <= rank < world and 0 <= local_rank < max(local_world, 1)):
        raise ArgumentError(
            f"RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local_rank} "
            f"LOCAL_WORLD_SIZE={local_world} are inconsistent."
        )
    return Launch(rank, world, local_rank, max(local_world, 1))


def rank_device(launch: Launch, device: str | None) -> str:
    """The device for a rank: ``cuda:LOCAL_RANK`` for ``None``/``"auto"``/``"cuda"`` where CUDA
    is available, else the device asked for (``"cpu"``, ``"cuda:3"``...).

    Raises:
        ArgumentError: The node has fewer GPUs than ranks on it.
    """
    import torch  # deferred: `histobag list` and friends need no torch

    if device in (None, "auto", "cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise ArgumentError(
                f"Local rank {launch.local_rank} has no GPU: this node has {count}. Start at "
                f"most {count} processes per node (torchrun --nproc-per-node={count})."
            )
        return f"cuda:{launch.local_rank}"
    if device in (None, "auto"):
        return "cpu"
    return str(device)


def cpu_threads_per_rank(local_world_size: int, cores: int | None = None) -> int:
    """The math threads each of ``local_world_size`` CPU ranks on a node gets: an equal share
    of the cores this process may use (at least 1)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, local_world_size))


def limit_cpu_threads(threads: int) -> None:
    """Give this process's math (torch's intra-op threads) ``threads`` cores."""
    import torch  # deferred: `histobag list` and friends need no torch

    torch.set_num_threads(max(1, int(threads)))


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM (sent by SLURM on preemption or time-out, and by torchrun when
    a sibling rank fails) stops the process as Ctrl-C would: ``finally`` blocks run, so its
    slide claims are released at once instead of going stale, and no partial file is left.
    Exits with status 143 (128 + SIGTERM). Only in the main thread; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_id(
    launch: Launch | None, environ: Mapping[str, str] | None = None, timeout: float = 10.0
) -> str | None:
    """An id shared by every process of this launch and by no other, or None.

    - a SLURM job array: its ``SLURM_ARRAY_JOB_ID``;
    - torchrun: an id the first rank to ask puts in torchrun's own key-value store (at
      ``MASTER_ADDR:MASTER_PORT``, served by the launcher; a compare-and-set, so no rank waits
      for another). ``None`` when no store answers within ``timeout`` seconds.

    The run report uses it to tell a late rank of a run from a later run (see
    :mod:`histobag.bags.report`).
    """
    env = os.environ if environ is None else environ
    if launch is None:
        array = env.get("SLURM_ARRAY_JOB_ID")
        return f"slurm-array-{array}" if array else None
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    if not addr or not port or not port.isdigit():
        return None
    import torch.distributed as dist  # deferred: only torchrun ranks need it

    try:
        store = dist.TCPStore(addr, int(port), is_master=False, timeout=timedelta(seconds=timeout))
        value = store.compare_set("histobag/run-id", "", uuid.uuid4().hex)
    except (RuntimeError, ValueError, OSError):  # no store there: a launcher without one
        return None
    return f"torchrun-{value.decode()}"


def process_start_time() -> float | None:
    """When this process started (seconds since the epoch), from ``/proc``; None elsewhere.

    Processes launched together (``cmd & cmd & cmd``, torchrun's ranks) start within
    milliseconds, whereas their runs start only after importing torch and building a model,
    which takes longer in some than in others.

    The start is measured back from now on the boot clock (``/proc/uptime``), to within a few
    clock ticks; the boot time in ``/proc/stat`` is whole seconds, too coarse to tell a rerun
    from the run that ended just before it.
    """
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        now = time.time()
        return now - (uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
