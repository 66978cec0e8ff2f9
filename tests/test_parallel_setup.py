"""The settings tests/conftest.py applies so that ``pytest -n auto`` is fast and deterministic."""

from __future__ import annotations

import importlib
import os
import sys

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import THREAD_VARIABLES, limit_math_threads, threads_per_worker


def test_a_worker_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    assert threads_per_worker() == 16 // 4
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "32")
    assert threads_per_worker() == 1  # never none
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    assert threads_per_worker() is None  # a serial run keeps the libraries' defaults


def test_the_limit_reaches_torch_and_the_environment_but_keeps_the_users_choice(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    before = torch.get_num_threads()
    try:
        limit_math_threads()
        assert torch.get_num_threads() == 8 // 4
    finally:
        torch.set_num_threads(before)
    # The environment reaches the subprocesses the tests start (CLI runs, reading workers).
    expected = {name: str(8 // 4) for name in THREAD_VARIABLES} | {"MKL_NUM_THREADS": "3"}
    assert {name: os.environ[name] for name in THREAD_VARIABLES} == expected


def derandomized_examples() -> list[list[int]]:
    """The examples a derandomized property test of many integers is given."""
    seen: list[list[int]] = []

    @settings(derandomize=True, max_examples=50)
    @given(st.lists(st.integers(100, 1000), min_size=20, max_size=20))
    def probe(values: list[int]) -> None:
        seen.append(values)

    probe()
    return seen


def test_derandomized_examples_do_not_depend_on_the_modules_imported_before(tmp_path, monkeypatch):
    # Hypothesis draws "local constants" from the source of imported non-library modules; on
    # an xdist worker, which modules earlier tests imported depends on the scheduling.
    first = derandomized_examples()
    # (Hypothesis ignores constants between -100 and 100: it draws small integers often anyway.)
    counts = ", ".join(str(i) for i in range(101, 1000, 7))
    (tmp_path / "constants_probe.py").write_text(f"COUNTS = ({counts})\n")
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "constants_probe", raising=False)
    importlib.import_module("constants_probe")
    assert derandomized_examples() == first
