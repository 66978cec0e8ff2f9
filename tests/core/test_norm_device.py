"""The stain normalizers never make a batch wait for its device.

On an accelerator, reading a value back (``.item()``, ``.cpu()``, ``bool(tensor)``...) or copying
a constant from the host blocks until every queued kernel has run. These tests check, on the CPU
and on PyTorch's data-less "meta" device, that ``transform`` does neither: constant tables are
built once per device and reused, and every decision is a tensor operation. The one exception,
scikit-learn's Vahadane, says so (``runs_on_host``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from histobag.builtin import BUILTIN_NORMALIZERS
from histobag.norm import NORMALIZERS, autoselect, ops

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slideflow-norm"
NAMES = [name for name, _, _ in BUILTIN_NORMALIZERS]
ON_DEVICE = [name for name in NAMES if not NORMALIZERS[name].runs_on_host]
# Methods whose stain estimate uses an eigen-decomposition of the tissue OD covariance.
EIGH = ["macenko", "macenko_fast", "legacy_macenko", "legacy_vahadane"]
# Tensor methods that read a value back to the host, i.e. wait for the device.
READ_BACK = ["cpu", "item", "numpy", "tolist", "__bool__", "__float__", "__int__", "__index__"]
# Functions that make a tensor from host data (a blocking host-to-device copy on a GPU).
FROM_HOST = ["tensor", "as_tensor", "from_numpy", "arange"]


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """Four 48 px crops of the reference tiles, a blank and a black tile: (6, 3, 48, 48)."""
    with np.load(FIXTURES / "norm_reference.npz") as npz:
        images = torch.from_numpy(npz["images"][:, 32:80, 32:80]).permute(0, 3, 1, 2)
    blank = torch.full((1, 3, 48, 48), 250, dtype=torch.uint8)
    black = torch.zeros((1, 3, 48, 48), dtype=torch.uint8)
    return torch.cat([images, blank, black]).contiguous()


def _clear_tables() -> None:
    for table in ops.device_tables():
        table.cache_clear()


@pytest.fixture
def cold_tables() -> None:
    """Empty every per-device table cache (the next transform builds them)."""
    _clear_tables()


def _misses() -> dict[str, int]:
    return {t.__wrapped__.__qualname__: t.cache_info().misses for t in ops.device_tables()}


def _refuse(name: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{name} called inside transform")

    return refuse


def test_only_the_scikit_learn_vahadane_computes_on_the_host() -> None:
    assert {name for name in NAMES if NORMALIZERS[name].runs_on_host} == {"vahadane"}


@pytest.mark.usefixtures("cold_tables")
@pytest.mark.parametrize("name", ON_DEVICE)
def test_transform_reads_nothing_back(
    name: str, batch: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    norm = autoselect(name)
    expected = autoselect(name).transform(batch)  # before any patching
    with monkeypatch.context() as patch:
        for method in READ_BACK:
            patch.setattr(torch.Tensor, method, _refuse(f"Tensor.{method}"))
        first = norm.transform(batch)  # builds this device's tables and fit
        second = norm.transform(batch)
    assert torch.equal(first, expected)
    assert torch.equal(second, expected)
    assert not torch.equal(expected[:4], batch[:4])  # the tissue was normalised


@pytest.mark.usefixtures("cold_tables")
@pytest.mark.parametrize("name", ON_DEVICE)
def test_tables_and_fit_are_built_once_per_device(
    name: str, batch: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    norm = autoselect(name)
    first = norm.transform(batch)
    built = _misses()
    assert sum(built.values()) > 0  # every method looks its pixels up in a table
    fit_cache = {key: dict(value) for key, value in norm._device_fit.items()}
    with monkeypatch.context() as patch:
        for function in FROM_HOST:
            patch.setattr(torch, function, _refuse(f"torch.{function}"))
        second = norm.transform(batch)
    assert _misses() == built  # no table rebuilt
    assert list(norm._device_fit) == [("cpu", torch.float32)]
    for key, tensors in fit_cache.items():
        assert all(norm._device_fit[key][k] is v for k, v in tensors.items())
    assert torch.equal(first, second)


class _HostTouches(TorchDispatchMode):
    """Records every operator that reads or writes a tensor not on the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        leaves = tree_flatten((args, kwargs, out))[0]
        if any(isinstance(t, torch.Tensor) and t.device.type != "meta" for t in leaves):
            self.ops.append(str(func))
        return out


@pytest.mark.parametrize("name", ON_DEVICE)
def test_a_batch_on_a_data_less_device_never_touches_the_host(name: str) -> None:
    # Meta tensors have no values: any read-back raises, and a warm call must not even copy a
    # constant from the host.
    norm = autoselect(name)
    x = torch.empty((5, 3, 32, 32), dtype=torch.uint8, device="meta")
    norm.transform(x)
    with _HostTouches() as mode:
        out = norm.transform(x)
    assert mode.ops == []
    assert (out.device.type, out.shape, out.dtype) == ("meta", x.shape, torch.uint8)


@pytest.mark.usefixtures("cold_tables")
@pytest.mark.parametrize("name", ON_DEVICE)
def test_each_device_keeps_its_own_tables(name: str, batch: torch.Tensor) -> None:
    norm = autoselect(name)
    on_cpu = norm.transform(batch)
    after_cpu = _misses()
    norm.transform(batch.to("meta"))
    after_meta = _misses()
    # The meta batch built the same tables again, for its own device...
    assert after_meta != after_cpu
    assert sum(after_meta.values()) == 2 * sum(after_cpu.values())
    assert {key[0] for key in norm._device_fit} == {"cpu", "meta"}
    # ...and the CPU's are still there, unchanged.
    assert torch.equal(norm.transform(batch), on_cpu)
    assert _misses() == after_meta


def test_table_cache_keys_on_device_and_dtype() -> None:
    cpu, meta = torch.device("cpu"), torch.device("meta")
    table = ops.od_table(cpu, torch.float32)
    assert ops.od_table(cpu, torch.float32) is table
    assert ops.od_table(cpu, torch.float64) is not table
    assert ops.od_table(cpu, torch.float64).dtype == torch.float64
    assert ops.od_table(meta, torch.float32).device == meta
    assert table.device == cpu


@pytest.mark.parametrize("name", EIGH)
def test_eigh_on_the_device_equals_the_host_round_trip(
    name: str, batch: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host path (taken on devices without eigh) is the former code: copy, decompose, copy
    # back, with every table rebuilt.
    on_device = autoselect(name).transform(batch)
    monkeypatch.setattr(ops, "_EIGH_DEVICES", frozenset())
    _clear_tables()
    assert torch.equal(autoselect(name).transform(batch), on_device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("q", [0.01, 0.1, 0.9, 0.99, 1 / 3])
def test_quantile_rank_rounds_q_like_torch(q: float, dtype: torch.dtype) -> None:
    assert ops._round_to(q, dtype) == torch.tensor(q, dtype=dtype).item()
