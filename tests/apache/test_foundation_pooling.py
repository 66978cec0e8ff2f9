"""The token pooling and the timm ViT build shared by the ViT foundation models
(histobag.extractors.vit)."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import VisionTransformer
from torch import nn

from histobag.errors import ExtractorArgumentError
from histobag.extractors.vit import POOLINGS, TokenPooling, timm_vit_build, token_pooling_build


class FakeViT(nn.Module):
    """Returns fixed tokens: class token 0, registers 1-2, patch tokens 3-6 (B=2, C=3)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens * self.scale


def test_cls_is_the_first_token() -> None:
    pooled = TokenPooling(FakeViT(), "cls", num_prefix_tokens=3)(torch.zeros(2, 3, 8, 8))
    assert torch.equal(pooled, FakeViT().tokens[:, 0])


def test_cls_and_mean_skips_registers() -> None:
    tokens = FakeViT().tokens
    pooled = TokenPooling(FakeViT(), "cls+mean", num_prefix_tokens=3)(torch.zeros(2, 3, 8, 8))
    assert pooled.shape == (2, 6)
    assert torch.equal(pooled[:, :3], tokens[:, 0])
    assert torch.allclose(pooled[:, 3:], tokens[:, 3:].mean(1))
    assert not torch.allclose(pooled[:, 3:], tokens[:, 1:].mean(1))  # registers would shift it


@pytest.mark.parametrize(("pooling", "prefix"), [("avg", 1), ("cls", 0), ("cls+mean", 1.5)])
def test_bad_arguments_are_refused(pooling: str, prefix: object) -> None:
    with pytest.raises(ExtractorArgumentError):
        TokenPooling(FakeViT(), pooling, prefix)  # type: ignore[arg-type]


def test_build_loads_weights_into_the_backbone() -> None:
    backbone = FakeViT()
    build = token_pooling_build(backbone, pooling="cls", num_prefix_tokens=1, fixed_input_size=8)
    assert build.weights_target is backbone
    assert list(build.weights_target.state_dict()) == ["scale"]  # published names, no prefix
    assert build.fixed_input_size == 8
    assert build.adapt_state_dict is None
    assert "pooling='cls'" in repr(build.module)
    assert POOLINGS == ("cls", "cls+mean")


TINY = {"embed_dim": 24, "depth": 1, "num_heads": 2, "num_classes": 0, "img_size": 32}


def test_timm_vit_build_follows_the_card_kwargs() -> None:
    """Registers shift the patch mean; a network without dynamic_img_size fixes the input."""
    build = timm_vit_build("vit_small_patch16_224", {**TINY, "reg_tokens": 2}, pooling="cls+mean")
    assert isinstance(build.weights_target, VisionTransformer)
    assert build.module.backbone is build.weights_target
    assert build.module.num_prefix_tokens == 3  # class token + 2 registers
    assert build.fixed_input_size == 32
    assert build.module(torch.zeros(1, 3, 32, 32)).shape == (1, 48)


def test_timm_vit_build_dynamic_size_accepts_any_tile() -> None:
    build = timm_vit_build(
        "vit_small_patch16_224", {**TINY, "dynamic_img_size": True}, pooling="cls"
    )
    assert build.fixed_input_size is None
    assert build.module(torch.zeros(1, 3, 48, 48)).shape == (1, 24)


def test_timm_vit_build_refuses_non_square_fixed_input() -> None:
    with pytest.raises(ExtractorArgumentError, match="non-square"):
        timm_vit_build("vit_small_patch16_224", {**TINY, "img_size": (32, 48)}, pooling="cls")


def test_timm_vit_build_checks_pooling_before_building(monkeypatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was built before the pooling was checked")

    monkeypatch.setattr(timm, "create_model", refuse)
    with pytest.raises(ExtractorArgumentError, match="pooling must be one of"):
        timm_vit_build("vit_small_patch16_224", TINY, pooling="mean")
