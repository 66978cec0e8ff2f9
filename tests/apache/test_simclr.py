"""``simclr``: SimCLR checkpoints in the common layouts, against the plain backbones.

Random, perturbed torchvision ResNets and timm ViTs are saved the way common SimCLR code
saves them (plain state dicts, Lightning checkpoints, DDP/backbone/encoder prefixes, lightly's
Sequential backbone, projection heads), loaded through ``build_feature_extractor``, and
compared with the plain backbone on real histology tiles.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import histobag
from histobag.errors import ExtractorArgumentError, WeightsError
from histobag_apache import simclr
from tests.helpers import histology_tiles
from tests.parity import assert_parity, build_fp32, normalised, perturbed


@pytest.fixture(scope="module")
def resnet():
    """torchvision ResNet-18 with perturbed weights and BatchNorm statistics."""
    torch.manual_seed(0)
    model = perturbed(torchvision.models.resnet18(), seed=1, scale=0.1)
    tiles = histology_tiles(3, 64)
    backbone = torchvision.models.resnet18().eval()
    backbone.load_state_dict(model.state_dict())
    backbone.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = backbone(normalised(tiles))
    return model.state_dict(), tiles, expected


def _head(prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}0.weight": torch.randn(128, 512), f"{prefix}2.weight": torch.randn(64, 128)}


def _lightly(state):
    names = {v: k for k, v in simclr.LIGHTLY_RESNET.items()}
    out = {}
    for key, value in state.items():
        top, rest = key.split(".", 1)
        if top in names:
            out[f"model.backbone.{names[top]}.{rest}"] = value
    return out


LAYOUTS = {
    # plain torchvision state dict (ImageNet-style classifier fc dropped), arch given
    "plain": (lambda s: dict(s), {"arch": "resnet18"}, "weights"),
    # Lightning: backbone./projection_head., arch in hyper_parameters
    "lightning": (
        lambda s: {
            "state_dict": {
                **{f"backbone.{k}": v for k, v in s.items() if not k.startswith("fc.")},
                **_head("projection_head.layers."),
            },
            "hyper_parameters": {"arch": "resnet18", "lr": 0.3},
            "epoch": 3,
        },
        {},
        "ckpt",
    ),
    # sthalles/SimCLR: DDP module., fc replaced by the MLP head, top-level arch
    "ddp-fc-head": (
        lambda s: {
            "arch": "resnet18",
            "state_dict": {
                **{f"module.backbone.{k}": v for k, v in s.items() if not k.startswith("fc.")},
                **_head("module.backbone.fc."),
            },
        },
        {},
        "weights",
    ),
    # lightly: Sequential(*children()[:-1]) backbone, backbone name in hyper_parameters
    "lightly": (
        lambda s: {
            "state_dict": {**_lightly(s), **_head("model.projection_head.layers.")},
            "hyper_parameters": {"backbone": "resnet18"},
        },
        {},
        "ckpt",
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_resnet_layouts(layout, resnet, tmp_path):
    state, tiles, expected = resnet
    make, kwargs, how = LAYOUTS[layout]
    path = tmp_path / "simclr.ckpt"
    torch.save(make(state), path)
    extractor = build_fp32("simclr", **{how: path}, **kwargs)
    assert extractor.num_features == 512 and extractor.weights_sha256
    assert extractor.weights_source == str(path)
    got = extractor(tiles)
    assert got.shape == (3, 512)
    assert_parity(got, expected)


def test_vit_backbone(tmp_path):
    torch.manual_seed(0)
    arch = "vit_tiny_patch16_224"
    model = perturbed(timm.create_model(arch, pretrained=False, num_classes=0), seed=2)
    checkpoint = {
        "state_dict": {
            **{f"model.encoder.{k}": v for k, v in model.state_dict().items()},
            "model.projector.0.weight": torch.randn(64, 192),
            "model.head.weight": torch.randn(10, 192),
        },
        "hyper_parameters": {"backbone": arch},
    }
    torch.save(checkpoint, tmp_path / "vit.ckpt")
    extractor = build_fp32("simclr", ckpt=tmp_path / "vit.ckpt")
    tiles = histology_tiles(2, 224)
    with torch.inference_mode():
        expected = model(normalised(tiles))
    got = extractor(tiles)
    assert got.shape == (2, 192) and extractor.fixed_input_size == 224
    assert_parity(got, expected)


def test_errors_list_the_layouts(resnet, tmp_path):
    state, _, _ = resnet
    torch.save({f"trunk.{k}": v for k, v in state.items()}, tmp_path / "odd.pth")
    with pytest.raises(WeightsError, match="lightly's") as info:
        histobag.build_feature_extractor("simclr", ckpt=tmp_path / "odd.pth", arch="resnet18")
    assert "trunk.conv1.weight" in str(info.value)
    torch.save(dict(state), tmp_path / "plain.pth")
    with pytest.raises(ExtractorArgumentError, match="pass arch="):
        histobag.build_feature_extractor("simclr", ckpt=tmp_path / "plain.pth")
    with pytest.raises(WeightsError, match="resnet50 backbone"):
        histobag.build_feature_extractor("simclr", ckpt=tmp_path / "plain.pth", arch="resnet50")
    with pytest.raises(ExtractorArgumentError, match="needs a checkpoint"):
        histobag.build_feature_extractor("simclr", arch="resnet18")
    with pytest.raises(ExtractorArgumentError, match="not both"):
        histobag.build_feature_extractor(
            "simclr", ckpt=tmp_path / "plain.pth", weights=tmp_path / "plain.pth", arch="resnet18"
        )
    with pytest.raises(ExtractorArgumentError, match="Unknown backbone"):
        histobag.build_feature_extractor("simclr", weights="random", arch="resnet_nope")
    random = histobag.build_feature_extractor("simclr", weights="random", arch="resnet18")
    assert random.num_features == 512 and random.weights_source == "random"
    assert "simclr" in histobag.list_extractors(tag="ssl")
