"""How the engine starts its tile-reading processes, and what it says when they cannot run.

- **CPU models**: ``fork`` where the platform has it: a worker is a copy of the running
  process, ready in milliseconds.
- **Accelerators** (CUDA, MPS): a process that has initialised CUDA must not fork, and
  ``spawn`` re-imports torch and histobag in every worker of every run (measured: first batch
  after 5.4 s with 4 spawned workers, against 0.13 s forked). Workers come from a
  ``forkserver`` instead, started once per process with histobag's engine imported
  (preloaded), so every later run forks ready workers from it. Workers never touch CUDA.

As with ``spawn``, each forkserver worker imports the main script again (as
``__mp_main__``): a script that starts a run at import time must guard it with
``if __name__ == "__main__":``. Tile sources must be importable by the workers: a class
defined in a notebook or an interactive session is not, so :func:`check_importable` says so
before the run starts, and suggests ``num_workers=0``.

Reading workers pass batches through shared memory (``/dev/shm``). Docker gives containers
64 MB of it by default, less than a few workers' prefetched batches: the kernel then kills a
worker with a bus error. :func:`shared_memory_error` turns that into an error that names the
fix (``docker run --shm-size``).
"""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import sys
from collections.abc import Iterable
from multiprocessing.context import BaseContext
from typing import Any

import torch

from histobag.errors import ArgumentError, SharedMemoryError

__all__ = ["check_importable", "shared_memory_error", "worker_context"]

#: Imported once by the forkserver, so that workers forked from it start with them loaded.
FORKSERVER_PRELOAD = ["histobag.engine", "histobag.tile_readers"]

_SHARED_MEMORY = "/dev/shm"
_SHARED_MEMORY_SIGNS = ("bus error", "shared memory", "/torch_", "shm")


def worker_context(device: torch.device) -> BaseContext:
    """The multiprocessing context for reading workers feeding a model on ``device``."""
    methods = multiprocessing.get_all_start_methods()
    if device.type == "cpu" and "fork" in methods:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        # Only read before the server starts (the first run that uses it); later calls are
        # harmless.
        context.set_forkserver_preload(FORKSERVER_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def check_importable(openers: Iterable[Any], context: BaseContext) -> None:
    """Refuse tile sources that workers started by ``context`` could not import.

    Raises:
        ArgumentError: An opener's class is defined in an interactive ``__main__`` (a notebook,
            the Python prompt), which forkserver and spawn workers cannot import.
    """
    if context.get_start_method() == "fork":
        return
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__file__", None):
        return  # a script: workers import it again (hence the main guard)
    for opener in openers:
        if type(opener).__module__ == "__main__":
            raise ArgumentError(
                f"The tile source {type(opener).__name__} is defined in this interactive "
                "session, which the reading worker processes cannot import. Define it in a "
                "module (a .py file you import), or pass num_workers=0 to read tiles in this "
                "process."
            )


def shared_memory_free() -> int | None:
    """Free bytes in ``/dev/shm``, or ``None`` where there is none."""
    try:
        return shutil.disk_usage(_SHARED_MEMORY).free
    except OSError:
        return None


def shared_memory_error(
    exc: BaseException, workers: int, exit_codes: Iterable[int | None] = ()
) -> SharedMemoryError | None:
    """``exc`` as a :class:`~histobag.errors.SharedMemoryError` when it says that reading
    workers ran out of shared memory, else ``None``.

    Args:
        exc: What stopped the run.
        workers: How many reading workers the run had.
        exit_codes: The workers' exit codes where known: one killed by a bus error (``-7``)
            ran out of shared memory, even where ``exc`` only says it "exited unexpectedly".
    """
    if not workers or not isinstance(exc, (RuntimeError, OSError)):
        return None
    text = str(exc).lower()
    bus_error = any(code == -signal.SIGBUS for code in exit_codes)
    if not bus_error and not any(sign in text for sign in _SHARED_MEMORY_SIGNS):
        return None
    free = shared_memory_free()
    room = f" ({free / 2**20:.0f} MB free in {_SHARED_MEMORY})" if free is not None else ""
    return SharedMemoryError(
        f"The tile-reading workers ran out of shared memory{room}. In Docker, start the "
        "container with more (e.g. docker run --shm-size=8g); or use fewer reading workers "
        "(--workers / num_workers), a smaller batch size, or num_workers=0. Finished bags are "
        f"kept; rerun to resume. ({str(exc).splitlines()[0]})"
    )
