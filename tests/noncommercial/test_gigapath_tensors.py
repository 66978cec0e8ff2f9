"""The GigaPath slide encoder and LongNet on the way to a GPU: tensors (a tile encoder's
output, on its device) go to the model's device without numpy, a pretend GPU gets every
model of the pipeline, and a failing fused attention kernel is reported once."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import histobag
from histobag import ExtractorSpec, Preprocessing
from histobag_noncommercial import gigapath_slide as gs
from histobag_noncommercial import gigapath_specs, longnet
from tests.core.fake_cuda import FakeCuda
from tests.core.toy_models import registered as registered_specs
from tests.noncommercial.test_gigapath_slide import FIXTURES, small_slide, tiny_tile

SMALL = "gigapath.slide-small-tensors"
TINY = "gigapath.tile-tiny-tensors"


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    """The reduced encoders of test_gigapath_slide, under names of this module."""
    slide = gigapath_specs.gigapath_slide()
    specs = [
        slide.replace(
            name=SMALL,
            aliases=(),
            factory=small_slide,
            hf_repo=None,
            hf_filename=None,
            distribution="",
        ),
        ExtractorSpec(
            name=TINY,
            factory=tiny_tile,
            license="MIT",
            num_features=64,
            input_size=16,
            preprocessing=Preprocessing(),
        ),
    ]
    with registered_specs(*specs):
        yield


@pytest.fixture(scope="module")
def small() -> gs.GigaPathSlideExtractor:
    return gs.build_slide_encoder(
        FIXTURES / "slide_encoder_small.pth", device="cpu", mixed_precision=False, name=SMALL
    )


@pytest.fixture
def no_numpy(monkeypatch):
    """Any tensor → numpy conversion raises, as it does for a tensor on a GPU."""

    def refuse(self, *args, **kwargs):
        raise TypeError(f"can't convert {self.device} tensor to numpy")

    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    monkeypatch.setattr(torch.Tensor, "__array__", refuse)


def _inputs(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((n, 64)).astype(np.float32)
    coords = rng.choice(30 * 30, n, replace=False)
    return features, np.stack([coords % 30, coords // 30], axis=1) * 256


def test_tensor_inputs_never_go_through_numpy(small, monkeypatch):
    features, coords = _inputs()
    expected = small(features, coords)
    assert torch.equal(small.embed_model_grid(features, coords), expected)  # a 256 px grid
    expected_bag = small.embed_bag(features, coords // 16)  # 16 px tiles: the same cells
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "numpy", lambda *a: pytest.fail("numpy"))
        patch.setattr(torch.Tensor, "__array__", lambda *a: pytest.fail("numpy"))
        got = small(torch.from_numpy(features), torch.from_numpy(coords))
        as_double = small(torch.from_numpy(features).double(), torch.from_numpy(coords).float())
    assert torch.equal(got, expected) and torch.equal(as_double, expected)
    assert got.device.type == "cpu" and got.dtype == torch.float32
    # embed_bag converts the coordinates on the host (a few numbers per tile), not features.
    tensors = small.embed_bag(torch.from_numpy(features), torch.from_numpy(coords // 16))
    assert torch.equal(tensors, expected_bag)


class Recorder(torch.nn.Module):
    """Stands in for the encoder: records the inputs' device and dtype."""

    def __init__(self, config: gs.SlideEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.seen: list[tuple[torch.device, torch.dtype, torch.device, torch.dtype]] = []

    def forward(self, features, coords, *, layer, pooling):
        self.seen.append((features.device, features.dtype, coords.device, coords.dtype))
        return torch.zeros(1, self.config.embed_dim)


@pytest.mark.parametrize("source", ["meta", "cpu", "numpy"])
def test_inputs_go_to_the_models_device(source, no_numpy):
    fe = gs.build_slide_encoder("random", device="cpu", mixed_precision=False, name=SMALL)
    recorder = Recorder(fe.config)
    fe.model, fe.device = recorder, torch.device("meta")  # a device numpy cannot reach
    features, coords = _inputs()
    if source != "numpy":
        features = torch.from_numpy(features).to(source)
        coords = torch.from_numpy(coords).to(source)
    assert fe.embed_model_grid(features, coords).shape == (fe.config.embed_dim,)
    meta = torch.device("meta")
    assert recorder.seen == [(meta, torch.float32, meta, torch.int64)]


def test_tile_encoder_output_goes_straight_to_the_slide_encoder(no_numpy):
    """The issue's ``gp.slide(gp.tile(batch), coords)``: the tile features are a tensor on
    the tile encoder's device."""
    pipe = histobag.build_feature_extractor(
        "gigapath",
        tile_encoder=TINY,
        slide_encoder=SMALL,
        tile_encoder_weights="random",
        slide_encoder_weights=FIXTURES / "slide_encoder_small.pth",
        device="cpu",
        precision="fp32",
    )
    tiles = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    coords = torch.arange(12).reshape(6, 2) * 256
    features = pipe.tile(tiles)
    assert isinstance(features, torch.Tensor)
    embedding = pipe.slide(features, coords)
    assert embedding.shape == (256,) and torch.isfinite(embedding).all()


def test_every_model_of_the_pipeline_goes_to_the_gpu_asked_for(monkeypatch):
    gpus = FakeCuda([(8, 0), (8, 0)], current=0).install(monkeypatch)
    pipe = histobag.build_feature_extractor(
        "gigapath",
        tile_encoder=TINY,
        slide_encoder=SMALL,
        tile_encoder_weights="random",
        slide_encoder_weights="random",
        device="cuda:1",
    )
    one = torch.device("cuda", 1)
    assert pipe.device == pipe.tile.device == pipe.slide.device == one
    assert len(gpus.moves) == 3 and set(gpus.moves) == {one}  # pipeline, tile, slide
    assert set(gpus.set_device_calls) == {1} and gpus.current == 1
    # The precision each spec asks for on CUDA, its linear layers cast to it once, not
    # the norms.
    assert pipe.tile.precision == "bfloat16"
    assert pipe.slide.precision == gigapath_specs.gigapath_slide().autocast_dtype != "float32"
    slide = pipe.slide.model
    assert slide.patch_embed.proj.weight.dtype == getattr(torch, pipe.slide.precision)
    assert slide.norm.weight.dtype == torch.float32
    assert pipe.tile.model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------
# LongNet attention
# ------------------------------------------------------------------------------------------


@pytest.fixture
def not_warned_yet(monkeypatch):
    monkeypatch.setattr(longnet, "_fallback_warned", False)


def _qkv(dtype=torch.float32, length=50):
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 4, length, 16, generator=generator).to(dtype) for _ in range(3))


def test_a_failing_fused_kernel_warns_once_naming_the_error(monkeypatch, not_warned_yet):
    def fail(q, k, v):
        raise RuntimeError("No available kernel. Aborting execution.\nmore detail")

    monkeypatch.setattr(longnet, "_efficient_kernel", fail)
    q, k, v = _qkv()
    with pytest.warns(longnet.AttentionFallbackWarning, match="No available kernel") as caught:
        out, lse = longnet.efficient_attention_with_lse(q, k, v)
    assert "RuntimeError" in str(caught[0].message) and "more detail" not in str(caught[0].message)
    ref_out, ref_lse = longnet.attention_with_lse_math(q, k, v)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        longnet.efficient_attention_with_lse(q, k, v)
        longnet.efficient_attention_with_lse(*_qkv(length=7))


def test_a_working_fused_kernel_is_silent_and_its_lse_cropped(monkeypatch, not_warned_yet):
    q, k, v = _qkv()

    def kernel(q, k, v):  # as CUDA's: the log-sum-exp padded to a multiple of 32
        out, lse = longnet.attention_with_lse_math(q, k, v)
        return out, torch.cat([lse, lse.new_full((*lse.shape[:2], 14), 7.0)], dim=-1)

    monkeypatch.setattr(longnet, "_efficient_kernel", kernel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, lse = longnet.efficient_attention_with_lse(q, k, v)
    assert lse.shape == (2, 4, 50) and torch.equal(lse, longnet.attention_with_lse_math(q, k, v)[1])
    assert not longnet._fallback_warned


def test_reference_attention_converts_keys_and_values_once(monkeypatch):
    q, k, v = _qkv(torch.bfloat16)
    monkeypatch.setattr(longnet, "_MATH_CHUNK_ELEMENTS", 2 * 4 * 50 * 8)  # 8 query rows a chunk
    real_float = torch.Tensor.float
    converted = []

    def float_(self, *args, **kwargs):
        converted.append("k" if self is k else "v" if self is v else "q")
        return real_float(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "float", float_)
    out, lse = longnet.attention_with_lse_math(q, k, v)
    monkeypatch.undo()
    assert converted.count("q") == 7  # seven chunks of queries
    assert converted.count("k") == converted.count("v") == 1
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)
