"""Fixtures shared by the tests of all four distributions, and the settings that keep a
parallel run (``pytest -n auto``, as ``make test`` runs it) as fast and as deterministic as a
serial one."""

from __future__ import annotations

import os
import sys


def threads_per_worker() -> int | None:
    """Math threads each pytest-xdist worker may use: its share of the cores, or ``None`` when
    the tests run in a single process (which keeps the libraries' defaults)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def limit_math_threads() -> None:
    """Give each xdist worker its share of the cores for torch, BLAS and numba.

    Each library otherwise starts one thread per core in every worker, and OpenMP threads
    spin-wait for each other: with two workers on two cores a property test of small batches
    took 135 s instead of 6 s. The environment variables also reach the subprocesses the tests
    start; a value the user set is kept.
    """
    threads = threads_per_worker()
    if threads is None:
        return
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))
    if "torch" in sys.modules:  # imported before this file (by a pytest plugin): set it directly
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pin_hypothesis_constants() -> None:
    """Stop Hypothesis drawing "local constants" from whatever modules happen to be imported.

    Hypothesis mixes integers found in the source of every non-library module in
    ``sys.modules`` into its draws, so with ``derandomize=True`` the examples of a property test
    still depend on which tests ran before it in the same process: on the xdist worker it lands
    on, or on the selection given to pytest. An empty local pool makes them depend on the test
    alone, so that a failure seen in CI reproduces with the same examples locally.
    ``tests/test_parallel_setup.py`` checks that this still holds for the installed Hypothesis.
    """
    from hypothesis.internal.conjecture import providers

    if hasattr(providers, "_get_local_constants") and hasattr(providers, "Constants"):
        providers._get_local_constants = providers.Constants


# Before numpy, torch or numba are imported below or by the test modules: they read the
# thread variables once, when first imported.
limit_math_threads()
pin_hypothesis_constants()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import histology_tiles  # noqa: E402


@pytest.fixture(scope="session")
def tiles224() -> np.ndarray:
    """Four real histology tiles, 224 px."""
    return histology_tiles(4, 224)
