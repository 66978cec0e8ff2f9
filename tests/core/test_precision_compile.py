"""``precision=`` and ``compile=`` of ``build_feature_extractor``: the dtype the model computes
in, refused where the device cannot, recorded so a rebuild computes the same way; and
``torch.compile`` as an option with a clear error where it cannot compile."""

from __future__ import annotations

import contextlib
import json
import warnings

import numpy as np
import pytest
import timm
import torch

import histobag
from histobag.bags.config import differences, make_config
from histobag.errors import ConfigError, ExtractorArgumentError
from histobag.extractors import base
from histobag.extractors.saved import extractor_from_saved_model, save_model
from tests.core.toy_models import registered, toy_spec

TILES = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def toy():
    with registered(toy_spec()):
        yield


@pytest.fixture
def cpu_bf16(monkeypatch):
    """A CPU with bfloat16 instructions (torch's autocast emulates them where missing)."""
    monkeypatch.setattr(base, "cpu_supports_bf16", lambda: True)


@pytest.fixture
def cpu_without_reduced_precision(monkeypatch):
    monkeypatch.setattr(base, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(base, "cpu_supports_fp16", lambda: False)


def _build(**kwargs):
    return histobag.build_feature_extractor("toy", weights="random", device="cpu", **kwargs)


def _conv_dtype(fe) -> torch.dtype:
    """The dtype the model's first convolution actually computed in."""
    seen = []
    handle = fe.model.conv.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        out = fe(TILES)
    finally:
        handle.remove()
    assert out.dtype == torch.float32  # outputs are float32 whatever the model computed in
    return seen[0]


def _config(fe):
    return make_config(fe, None, tile_px=32, tile_um=16, writer="pt", coordinates="centre")


def _write_config(folder, fe):
    folder.mkdir(parents=True, exist_ok=True)
    config = _config(fe)
    (folder / "bags_config.json").write_text(json.dumps(config))
    return config


# -- precision ----------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["fp32", "float32", "FP32"])
def test_fp32_is_mixed_precision_false_and_recorded_the_same(spelling, cpu_bf16):
    fe = _build(precision=spelling)
    old = _build(mixed_precision=False)
    assert fe.precision == old.precision == "float32"
    assert _conv_dtype(fe) == torch.float32
    # Recorded as before precision= existed, so such bags folders keep their fingerprint.
    assert fe.dump_config() == old.dump_config()
    assert fe.dump_config()["kwargs"]["mixed_precision"] is False
    assert differences(_config(fe), _config(old)) == []


@pytest.mark.parametrize(("spelling", "dtype"), [("bf16", "bfloat16"), ("bfloat16", "bfloat16")])
def test_bf16_computes_in_bfloat16_and_is_recorded(spelling, dtype, cpu_bf16):
    fe = _build(precision=spelling)
    assert fe.precision == dtype and fe.provenance()["precision"] == dtype
    assert fe.requested_precision == "bf16" and fe.mixed_precision
    assert _conv_dtype(fe) == torch.bfloat16
    assert fe.dump_config()["kwargs"] == {"weights": "random", "precision": "bf16"}
    fp32 = _build(precision="fp32")
    fp32.model.load_state_dict(fe.model.state_dict())
    torch.testing.assert_close(fe(TILES), fp32(TILES), rtol=0.05, atol=0.05)


def test_fp16_computes_in_float16_where_supported(monkeypatch):
    monkeypatch.setattr(base, "cpu_supports_fp16", lambda: True)
    fe = _build(precision="float16")
    assert fe.precision == "float16"
    assert _conv_dtype(fe) == torch.float16
    assert fe.dump_config()["kwargs"]["precision"] == "fp16"


def test_auto_is_the_default_and_records_nothing(monkeypatch):
    for supported, dtype in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(base, "cpu_supports_bf16", lambda s=supported: s)
        fe, default = _build(precision="auto"), _build()
        assert fe.precision == default.precision == dtype
        assert fe.requested_precision == "auto"
        assert (
            fe.dump_config()
            == default.dump_config()
            == {
                "extractor": "toy",
                "kwargs": {"weights": "random"},
            }
        )


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", "bfloat16"), ("fp16", "float16")])
def test_a_precision_the_cpu_lacks_is_refused_before_building(
    precision, dtype, cpu_without_reduced_precision
):
    calls = []

    def factory(spec, **kwargs):
        calls.append(kwargs)
        return torch.nn.Linear(3, 8)

    with registered(toy_spec(name="counted", factory=factory, aliases=())):
        with pytest.raises(ExtractorArgumentError) as err:
            histobag.build_feature_extractor(
                "counted", weights="random", device="cpu", precision=precision
            )
    message = str(err.value)
    assert f"precision={precision!r}" in message and "cpu" in message
    assert dtype in message  # why: the instructions it lacks
    assert "'fp32'" in message and "'auto'" in message  # what to use instead
    assert calls == []


def test_cuda_without_bfloat16_suggests_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    cuda = torch.device("cuda")
    with pytest.raises(ExtractorArgumentError) as err:
        base.select_precision(cuda, True, "bfloat16", "bf16")
    assert "does not support bfloat16" in str(err.value)
    assert "'fp32' or 'fp16'" in str(err.value)
    assert base.select_precision(cuda, True, "bfloat16", "fp16") == "float16"
    assert base.select_precision(cuda, True, "bfloat16", "auto") == "float16"


def test_a_dtype_torch_autocast_disables_is_unsupported(monkeypatch):
    message = "In XPU autocast, but the target dtype is not supported. Disabling autocast."

    def autocast(device_type, dtype):
        warnings.warn(message, stacklevel=2)

    monkeypatch.setattr(torch, "autocast", autocast)
    assert base.precision_unsupported(torch.device("xpu"), "bfloat16") == message
    assert "no autocast" in base.precision_unsupported(torch.device("meta"), "float16")


@pytest.mark.parametrize("precision", ["fp8", "half", 16, None, True])
def test_unknown_precisions_list_the_accepted_ones(precision):
    with pytest.raises(ExtractorArgumentError) as err:
        _build(precision=precision)
    assert repr(precision) in str(err.value)
    for name in ("'auto'", "'fp32'", "'bf16'", "'fp16'"):
        assert name in str(err.value)


def test_mixed_precision_false_with_reduced_precision_is_a_contradiction(cpu_bf16):
    with pytest.raises(ExtractorArgumentError, match=r"contradicts precision='bf16'"):
        _build(precision="bf16", mixed_precision=False)
    assert _build(precision="fp32", mixed_precision=False).precision == "float32"
    assert _build(precision="auto", mixed_precision=False).precision == "float32"


def test_accepted_arguments_name_precision_and_compile():
    with pytest.raises(ExtractorArgumentError) as err:
        _build(depth=3)
    accepted = str(err.value).split("Accepted: ")[1]
    assert "precision" in accepted and "compile" in accepted


@pytest.mark.parametrize("kwargs", [{}, {"precision": "bf16"}, {"precision": "fp32"}])
def test_rebuild_computes_in_the_recorded_precision(tmp_path, monkeypatch, kwargs):
    monkeypatch.setattr(base, "cpu_supports_bf16", lambda: True)
    fe = _build(**kwargs)
    config = _write_config(tmp_path, fe)
    assert config["provenance"]["precision"] == fe.precision
    rebuilt, _ = histobag.rebuild_extractor(tmp_path)
    assert rebuilt.precision == fe.precision
    assert rebuilt.dump_config() == fe.dump_config()


def test_a_recorded_precision_the_machine_lacks_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(base, "cpu_supports_bf16", lambda: True)
    _write_config(tmp_path, _build(precision="bf16"))
    monkeypatch.setattr(base, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ConfigError, match="precision='bf16' is not available"):
        histobag.rebuild_extractor(tmp_path)


def test_saved_models_take_precision(tmp_path, cpu_bf16):
    torch.manual_seed(0)
    network = timm.create_model("test_resnet", num_classes=2).eval()
    folder = save_model(
        network, tmp_path / "m", arch="test_resnet", tile_px=32, tile_um=16, outcome_labels="ab"
    )
    fe = extractor_from_saved_model(folder, device="cpu", precision="bf16")
    assert fe.precision == "bfloat16" and fe.dump_config()["kwargs"] == {"precision": "bf16"}
    again = histobag.build_feature_extractor(fe.dump_config()["extractor"], precision="fp32")
    assert again.precision == "float32"


# -- compile ------------------------------------------------------------------------------


@pytest.mark.parametrize("compile_", ["yes", None, 2])
def test_compile_must_be_a_bool(compile_):
    with pytest.raises(ExtractorArgumentError, match="compile must be True or False"):
        _build(compile=compile_)


def test_not_compiled_by_default():
    fe = _build()
    assert fe.compiled is False and fe.provenance()["compiled"] is False
    assert "compile" not in fe.dump_config()["kwargs"]


def test_compile_does_not_change_the_bags_fingerprint():
    """A compiled run may resume a plain run's bags folder (and the other way round)."""
    plain = _build()
    config = make_config(plain, None, tile_px=16, tile_um=8, writer="pt", coordinates="top-left")
    compiled = json.loads(json.dumps(config))
    compiled["extractor"]["kwargs"]["compile"] = True
    compiled["provenance"]["compiled"] = True
    assert differences(config, compiled) == []
    other = json.loads(json.dumps(compiled))
    other["extractor"]["kwargs"]["precision"] = "bf16"
    assert differences(config, other) != []  # a precision is no speed-only option


@pytest.mark.slow
def test_compiled_model_matches_and_is_recorded(tmp_path):
    torch._dynamo.reset()
    fe = _build(precision="fp32", compile=True)
    plain = _build(precision="fp32")
    plain.model.load_state_dict(fe.model.state_dict())
    assert fe.compiled and fe.provenance()["compiled"] is True
    assert fe.dump_config()["kwargs"]["compile"] is True
    torch.testing.assert_close(fe(TILES), plain(TILES), rtol=1e-4, atol=1e-4)
    # The module itself stays the plain one (state dicts keep their keys).
    assert set(fe.model.state_dict()) == set(plain.model.state_dict())
    _write_config(tmp_path, fe)
    rebuilt, _ = histobag.rebuild_extractor(tmp_path)
    assert rebuilt.compiled and rebuilt.dump_config() == fe.dump_config()


@pytest.mark.slow
def test_a_compiler_failure_says_to_run_without_compile(monkeypatch):
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    # No C++ compiler, and no cached compiled code to hide its absence.
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/g++",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setattr(functorch_config, "enable_autograd_cache", False)
    fe = _build(precision="fp32", compile=True)  # compiled lazily: building succeeds
    try:
        with pytest.raises(ExtractorArgumentError) as err:
            fe(TILES)
    finally:
        torch._dynamo.reset()
    message = str(err.value)
    assert "torch.compile could not compile toy" in message
    assert "compile=False" in message and "--compile" in message
    assert "/nonexistent/g++" in message  # torch's own reason


def test_a_torch_that_cannot_compile_here_says_to_run_without_compile(monkeypatch):
    def refuse(model):
        raise RuntimeError("Python 3.15+ not yet supported for torch.compile")

    monkeypatch.setattr(torch, "compile", refuse)
    fe = _build(compile=True)
    with pytest.raises(ExtractorArgumentError, match=r"3\.15\+ not yet supported") as err:
        fe(TILES)
    assert "compile=False" in str(err.value)
    assert torch.isfinite(_build(compile=False)(TILES)).all()  # without compile it runs


def test_a_models_own_error_under_compile_is_not_blamed_on_the_compiler(monkeypatch):
    def broken(inputs):
        raise RuntimeError("shape mismatch in the model")

    monkeypatch.setattr(torch, "compile", lambda model: broken)
    fe = _build(compile=True)
    with pytest.raises(RuntimeError, match="shape mismatch") as err:
        fe(TILES)
    assert not isinstance(err.value, ExtractorArgumentError)
