"""CUDA devices on a pretend two-GPU machine: an explicit ``cuda:k`` is respected everywhere
(the extractor's device, where the model goes, the current GPU), a bare ``cuda`` means the
current GPU, indexed, and bfloat16 support is that of the model's GPU, natively."""

from __future__ import annotations

import pytest
import torch

import histobag
from histobag.errors import ExtractorArgumentError
from histobag.extractors import base, device
from tests.core.fake_cuda import FakeCuda
from tests.core.toy_models import ToyNet, registered, toy_spec

#: GPU 0 a T4 (compute capability 7.5: bfloat16 only emulated), GPU 1 an A100 (8.0).
T4, A100 = (7, 5), (8, 0)


@pytest.fixture(autouse=True)
def toy():
    with registered(toy_spec()):
        yield


@pytest.fixture
def gpus(monkeypatch) -> FakeCuda:
    return FakeCuda([T4, A100]).install(monkeypatch)


def _build(dev, **kwargs):
    return histobag.build_feature_extractor("toy", weights="random", device=dev, **kwargs)


def test_the_default_device_is_the_current_gpu_indexed(gpus):
    gpus.current = 1
    assert device.default_device() == torch.device("cuda", 1)
    assert device.resolve_device(None) == torch.device("cuda", 1)
    assert device.resolve_device("cuda") == torch.device("cuda", 1)
    assert device.resolve_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert device.resolve_device("cuda:0") == torch.device("cuda", 0)
    assert device.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ExtractorArgumentError, match="not available"):
        device.resolve_device("cuda:2")


@pytest.mark.parametrize("index", [0, 1])
def test_an_explicit_gpu_reaches_the_model_and_becomes_current(gpus, index):
    gpus.current = 1 - index  # the other GPU is current when building starts
    fe = _build(f"cuda:{index}", precision="fp16")
    assert fe.device == torch.device("cuda", index)
    assert gpus.moves and set(gpus.moves) == {torch.device("cuda", index)}
    assert gpus.set_device_calls == [index] and gpus.current == index


def test_a_bare_cuda_is_the_current_gpu_and_stays_it(gpus):
    gpus.current = 1
    fe = _build("cuda", precision="fp16")
    assert fe.device == torch.device("cuda", 1) and "cuda:1" in repr(fe)
    assert set(gpus.moves) == {torch.device("cuda", 1)}
    gpus.current = 0  # something else changes the current GPU later: the model's stays
    assert fe.device == torch.device("cuda", 1)


def test_bf16_support_is_the_models_gpus_not_the_current_ones(gpus):
    t4, a100 = torch.device("cuda", 0), torch.device("cuda", 1)
    gpus.current = 1  # the A100 is current, the model is on the T4
    assert not device.cuda_supports_bf16(t4)
    assert base.select_precision(t4, True, "bfloat16", "auto") == "float16"
    assert "does not support bfloat16 natively" in base.precision_unsupported(t4, "bfloat16")
    gpus.current = 0  # and the other way round
    assert device.cuda_supports_bf16(a100)
    assert base.select_precision(a100, True, "bfloat16", "auto") == "bfloat16"
    assert base.precision_unsupported(a100, "bfloat16") is None
    assert gpus.current == 0  # checking did not change the current GPU


def test_emulated_bf16_does_not_count(gpus):
    gpus.current = 0
    assert torch.cuda.is_bf16_supported()  # torch's answer counts emulation on a T4
    assert not device.cuda_supports_bf16(torch.device("cuda"))
    assert _build("cuda:0").precision == "float16"  # auto: bfloat16 spec, float16 here
    with pytest.raises(ExtractorArgumentError) as err:
        _build("cuda:0", precision="bf16")
    assert "cuda:0" in str(err.value) and "'fp32' or 'fp16'" in str(err.value)
    assert _build("cuda:1", precision="bf16").precision == "bfloat16"


def test_rocm_gpus_support_bf16(gpus, monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2")
    assert device.cuda_supports_bf16(torch.device("cuda", 0))


def test_device_index_make_current_and_on_device(gpus):
    gpus.current = 1
    assert device.device_index(torch.device("cuda", 0)) == 0
    assert device.device_index(torch.device("cuda")) == 1
    assert device.device_index(torch.device("cpu")) is None
    device.make_current(torch.device("cpu"))
    assert gpus.set_device_calls == []
    device.make_current(torch.device("cuda", 0))
    assert gpus.set_device_calls == [0] and gpus.current == 0
    with device.on_device(torch.device("cuda", 1)):
        assert gpus.current == 1
    assert gpus.current == 0
    with device.on_device(torch.device("cpu")):
        assert gpus.current == 0


def test_without_cuda_nothing_cuda_is_called(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.cuda called on a CPU run")

    for name in ("set_device", "current_device", "get_device_capability"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    fe = _build("cpu")
    assert fe.device == torch.device("cpu")
    device.make_current(fe.device)


def test_an_extractor_made_directly_on_a_bare_cuda_is_indexed(gpus):
    gpus.current = 1
    spec = toy_spec()
    fe = base.FeatureExtractor(
        spec,
        base.ModelBuild(module=ToyNet()),
        spec.preprocessing,
        device=torch.device("cuda"),
        mixed_precision=True,
        config_kwargs={},
        weights_sha256=None,
        weights_source="random",
    )
    assert fe.device == torch.device("cuda", 1) and gpus.moves == [torch.device("cuda", 1)]


def test_a_float32_model_stays_float32_under_auto(gpus):
    """A spec with autocast_dtype="float32" (its official pipeline runs in fp32 only): "auto"
    means float32 on every device; reduced precision is still there when asked for."""
    a100 = torch.device("cuda", 1)
    for where in (a100, torch.device("cpu")):
        assert base.select_precision(where, True, "float32", "auto") == "float32"
    assert base.select_precision(a100, True, "float32", "bf16") == "bfloat16"
    assert base.select_precision(a100, True, "float32", "fp16") == "float16"
