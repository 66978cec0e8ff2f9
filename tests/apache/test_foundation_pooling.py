"""The token pooling shared by the ViT foundation models (histobag.extractors.vit)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from histobag.errors import ExtractorArgumentError
from histobag.extractors.vit import POOLINGS, TokenPooling, token_pooling_build


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
