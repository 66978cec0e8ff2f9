"""Checkpoint dtypes against the model's: lossless conversions warn, everything else is refused.

``load_state_dict`` casts whatever it is given: an int64 checkpoint becomes whole-number
weights and a float64 one is rounded, both without a word. histobag checks first.
"""

import warnings

import pytest
import torch
from safetensors.torch import save_file

import histobag
from histobag.errors import CheckpointDtypeWarning, CheckpointMismatchError
from histobag.extractors.weights import load_strict, lossless_dtype
from tests.core.toy_models import ToyNet, registered, toy_spec
from tests.helpers import perturb_


@pytest.fixture
def trained():
    net = ToyNet(8)
    perturb_(net, seed=3)
    return net.eval()


def _save(state, path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path


def _cast(state, dtype):
    """Every floating-point tensor cast to ``dtype`` (integer buffers kept)."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _build(path):
    with registered(toy_spec()):
        return histobag.build_feature_extractor(
            "toy", weights=path, device="cpu", mixed_precision=False
        )


def _assert_weights(fe, expected):
    loaded = fe.model.state_dict()
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_weights_for_float_parameters_are_refused(tmp_path, trained, suffix, dtype):
    state = {
        k: (v * 100).to(dtype) if v.is_floating_point() else v
        for k, v in trained.state_dict().items()
    }
    path = _save(state, tmp_path / f"int{suffix}")
    with pytest.raises(CheckpointMismatchError) as err:
        _build(path)
    message = str(err.value)
    name = str(dtype).removeprefix("torch.")
    assert f"conv.weight: {name} in the checkpoint, float32 in the model" in message
    assert "fc.bias" in message and "bn.running_var" in message
    assert "num_batches_tracked" not in message  # an integer buffer takes integers
    assert "floating-point checkpoint" in message


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_converted_with_a_warning(tmp_path, trained, suffix, dtype):
    state = _cast(trained.state_dict(), dtype)
    path = _save(state, tmp_path / f"half{suffix}")
    name = str(dtype).removeprefix("torch.")
    with pytest.warns(CheckpointDtypeWarning, match=f"{name} tensor\\(s\\) to float32") as rec:
        fe = _build(path)
    assert len([w for w in rec if issubclass(w.category, CheckpointDtypeWarning)]) == 1
    assert "No value changed" in str(rec[0].message)
    # exactly the checkpoint's values, now in float32
    _assert_weights(fe, _cast(state, torch.float32))


def test_float64_weights_that_are_float32_values_load_with_a_warning(tmp_path, trained):
    path = _save(_cast(trained.state_dict(), torch.float64), tmp_path / "double.safetensors")
    with pytest.warns(CheckpointDtypeWarning, match="float64 tensor\\(s\\) to float32"):
        fe = _build(path)
    _assert_weights(fe, trained.state_dict())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_float64_weights_that_would_be_rounded_are_refused(tmp_path, trained, suffix):
    state = _cast(trained.state_dict(), torch.float64)
    state["fc.weight"] = state["fc.weight"] + 2.0**-40  # below float32's resolution here
    path = _save(state, tmp_path / f"double{suffix}")
    with pytest.raises(CheckpointMismatchError) as err:
        _build(path)
    message = str(err.value)
    assert "values the model's dtype cannot hold exactly (1)" in message
    assert "fc.weight: float64 in the checkpoint, float32 in the model" in message
    assert "largest change" in message
    assert "v.float()" in message  # says how to convert it on purpose


def test_float32_weights_and_integer_buffers_of_another_width_load_silently(tmp_path, trained):
    state = trained.state_dict()
    state["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int32)
    path = _save(state, tmp_path / "w.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fe = _build(path)
    assert fe.model.bn.num_batches_tracked.dtype == torch.int64
    assert int(fe.model.bn.num_batches_tracked) == 7


def test_conversions_into_a_half_precision_model():
    module = torch.nn.Linear(2, 1).half()
    fits = {"weight": torch.tensor([[0.5, -2.0]]), "bias": torch.tensor([1.0])}
    with pytest.warns(CheckpointDtypeWarning, match="float32 tensor\\(s\\) to float16"):
        load_strict(module, fits, source="fits.pth", model="half")
    assert module.weight.tolist() == [[0.5, -2.0]]

    overflows = {"weight": torch.tensor([[1e5, 0.0]]), "bias": torch.tensor([1.0 / 3])}
    with pytest.raises(CheckpointMismatchError) as err:
        load_strict(module, overflows, source="big.pth", model="half")
    assert "largest change inf" in str(err.value) and "(2)" in str(err.value)


def test_non_tensor_values_are_named():
    module = torch.nn.Linear(2, 1)
    with pytest.raises(CheckpointMismatchError, match="not tensors \\(1\\):\n    bias: list"):
        load_strict(module, {"weight": torch.zeros(1, 2), "bias": [0.0]}, source="x", model="m")


@pytest.mark.parametrize(
    ("src", "dst", "lossless"),
    [
        (torch.float16, torch.float32, True),
        (torch.bfloat16, torch.float32, True),
        (torch.float32, torch.float64, True),
        (torch.float64, torch.float32, False),
        (torch.float16, torch.bfloat16, False),  # fewer mantissa bits
        (torch.bfloat16, torch.float16, False),  # smaller range
        (torch.int32, torch.int64, True),
        (torch.int64, torch.int32, False),
        (torch.bool, torch.int64, True),
        (torch.int64, torch.float64, False),  # never across kinds
        (torch.float16, torch.int64, False),
    ],
)
def test_lossless_dtype_table(src, dst, lossless):
    assert lossless_dtype(src, dst) is lossless
