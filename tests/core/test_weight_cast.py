"""Linear and convolution weights stored in the compute dtype once, at build time, instead of
cast by autocast at every batch: the features stay bit for bit what autocast gave with
float32 weights, and everything autocast runs in float32 keeps float32 parameters."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from timm.layers import StdConv2d
from torch import nn

import histobag
from histobag import ExtractorSpec, Preprocessing
from histobag.extractors import base
from histobag.extractors.autocast_weights import cast_autocast_weights, castable_modules
from histobag.extractors.base import ModelBuild
from tests.core.toy_models import registered

TILES = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}
PLAIN = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def tiny_vit(spec: ExtractorSpec) -> ModelBuild:
    """A ViT with a class token, position table, LayerScale and attention pooling."""
    net = timm.models.VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        init_values=1e-5,
        num_classes=0,
        global_pool="map",
    )
    return ModelBuild(module=net, num_features=32, fixed_input_size=32)


def tiny_resnet(spec: ExtractorSpec) -> nn.Module:
    """A ResNet (BatchNorm, residual blocks; enough convolutions to run channels-last)."""
    return timm.create_model("test_resnet", num_classes=0)


class Odd(nn.Module):
    """Layers whose weights must stay float32: a Linear subclass, a weight-standardised
    convolution, weight norm (a parametrisation), spectral norm (a pre-hook and another
    parameter), a forward pre-hook, a Linear holding another parameter, and an embedding
    tied to a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.std = StdConv2d(3, 8, 3, stride=4)
        self.normed = nn.utils.parametrizations.weight_norm(nn.Conv2d(8, 8, 1))
        self.sub = type("ScaledLinear", (nn.Linear,), {})(8, 8)
        self.spectral = nn.utils.spectral_norm(nn.Linear(8, 8))
        self.hooked = nn.Linear(8, 8)
        self.hooked.register_forward_pre_hook(lambda module, args: None)
        self.gained = nn.Linear(8, 8)
        self.gained.register_parameter("gain", nn.Parameter(torch.full((8,), 1.1)))
        self.embed = nn.Embedding(4, 8)
        self.tied = nn.Linear(8, 4, bias=False)
        self.tied.weight = self.embed.weight
        self.plain = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normed(self.std(x)).mean(dim=(2, 3))
        x = self.hooked(self.spectral(self.sub(x)))
        x = self.gained(x) * self.gained.gain + self.embed.weight[0]
        return self.plain(self.tied(x))


def build_odd(spec: ExtractorSpec) -> nn.Module:
    return Odd()


def _spec(name: str, factory) -> ExtractorSpec:
    return ExtractorSpec(
        name=name,
        factory=factory,
        license="MIT",
        num_features=8,
        input_size=32,
        preprocessing=Preprocessing(),
    )


@pytest.fixture(autouse=True)
def models(monkeypatch):
    """The models, on a CPU with bfloat16 and float16 (autocast emulates them where missing)."""
    monkeypatch.setattr(base, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(base, "cpu_supports_fp16", lambda: True)
    specs = [_spec("vit", tiny_vit), _spec("resnet", tiny_resnet), _spec("odd", build_odd)]
    with registered(*specs):
        yield


def _pair(name: str, precision: str, monkeypatch):
    """The extractor as before (float32 weights, cast by autocast) and as built now, with the
    same weights."""
    with monkeypatch.context() as patch:
        patch.setattr(base, "cast_autocast_weights", lambda *args: 0)
        before = histobag.build_feature_extractor(
            name, weights="random", device="cpu", precision=precision
        )
    after = histobag.build_feature_extractor(
        name, weights="random", device="cpu", precision=precision
    )
    # Trained-looking values: initial ones and zeros (norms) survive any dtype unchanged.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in before.model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    after.model.load_state_dict(before.model.state_dict())
    return before, after


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["vit", "resnet", "odd"])
def test_features_are_bit_identical(name, precision, monkeypatch):
    before, after = _pair(name, precision, monkeypatch)
    assert all(p.dtype == torch.float32 for p in before.model.parameters())
    assert torch.equal(before(TILES), after(TILES))
    assert after(TILES).dtype == torch.float32


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_linear_and_conv_weights_are_stored_in_the_compute_dtype(name, monkeypatch):
    _, fe = _pair(name, "bf16", monkeypatch)
    low = float32 = 0
    for module in fe.model.modules():
        for param in module.parameters(recurse=False):
            if type(module) in PLAIN:
                assert param.dtype == torch.bfloat16, module
                low += 1
            else:  # norms, pos_embed, cls_token, LayerScale, attention-pool latent
                assert param.dtype == torch.float32, module
                float32 += 1
    assert low and float32


def test_channels_last_weights_stay_channels_last(monkeypatch):
    _, fe = _pair("resnet", "bf16", monkeypatch)
    assert fe.channels_last
    convs = [m for m in fe.model.modules() if type(m) is nn.Conv2d]
    assert convs and all(
        m.weight.dtype == torch.bfloat16
        and m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in convs
    )


def test_layers_that_use_weights_otherwise_keep_float32(monkeypatch):
    _, fe = _pair("odd", "bf16", monkeypatch)
    model = fe.model
    assert castable_modules(model) == [model.plain]
    assert model.plain.weight.dtype == model.plain.bias.dtype == torch.bfloat16
    kept = ("std", "normed", "sub", "spectral", "hooked", "gained", "embed", "tied")
    for name in kept:
        module = getattr(model, name)
        assert all(p.dtype == torch.float32 for p in module.parameters()), name
    assert model.tied.weight is model.embed.weight  # still one parameter


def test_float32_and_other_devices_cast_nothing(monkeypatch):
    fe = histobag.build_feature_extractor("vit", weights="random", device="cpu", precision="fp32")
    assert all(p.dtype == torch.float32 for p in fe.model.parameters())
    model = tiny_resnet(None)
    for device_type in ("mps", "xpu"):
        assert cast_autocast_weights(model, torch.bfloat16, device_type) == 0
    assert cast_autocast_weights(model, torch.float32, "cpu") == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_shared_weights_are_cast_once_and_stay_shared():
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    model = nn.Sequential(first, second)
    expected = first.weight.detach().to(torch.bfloat16)
    assert cast_autocast_weights(model, torch.bfloat16, "cpu") == 3  # one weight, two biases
    assert second.weight is first.weight and torch.equal(first.weight, expected)
    assert isinstance(first.weight, nn.Parameter)
