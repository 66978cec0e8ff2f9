"""RetCCL: parity with torchvision's ResNet-50, loading the official flat state dict."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck

import histobag
from histobag.errors import OfflineWeightsError
from tests.gpl.helpers import reference_batch
from tests.helpers import histology_tiles
from tests.parity import (
    assert_parity,
    build_fp32,
    mismatch_message,
    perturbed,
    save_checkpoint,
)


def settle_like_trained_(model: nn.Module) -> None:
    """Give a random ResNet-50 a trained network's conditioning, after perturbing it.

    With unit residual-branch gains and random BatchNorm statistics a random ResNet-50 is
    chaotic: features reach ~1e7, and even with calibrated statistics a 1-ulp change of the
    input (ToTensor's ``x / 255`` against the device pipeline's ``x * (1 / 255)``) moves them by
    ~3e-4, so an absolute tolerance of 1e-5 would test float rounding, not the key mapping.
    Trained ResNets have small gains on the last BatchNorm of each residual branch and
    statistics that fit their activations; this sets both (the statistics come out distinct per
    channel, so a scrambled mapping still cannot pass).
    """
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, Bottleneck):
                block.bn3.weight.mul_(0.2)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(reference_batch(histology_tiles(8, 64, seed=3)))
    model.eval()


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    """The authors' network: torchvision's ResNet-50 layout with ``fc`` = identity."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Identity()
    settle_like_trained_(perturbed(model, seed=2))
    return model.eval()


@pytest.fixture(scope="module")
def official_file(reference, tmp_path_factory) -> Path:
    """Random weights saved as the authors published theirs: a flat state dict, no ``fc.*``."""
    return save_checkpoint(reference.state_dict(), tmp_path_factory.mktemp("retccl") / "retccl.pth")


def build(weights, **kwargs) -> histobag.FeatureExtractor:
    return build_fp32("retccl", weights, **kwargs)


def test_parity_with_torchvision(reference, official_file, tiles224):
    state_dict = torch.load(official_file, weights_only=True)
    assert "conv1.weight" in state_dict and not any(k.startswith("fc.") for k in state_dict)
    fe = build(official_file)
    tiles256 = histology_tiles(1, 256)  # the authors' tile size: any size runs, unresized
    with torch.inference_mode():
        expected224 = reference(reference_batch(tiles224))
        expected256 = reference(reference_batch(tiles256))
    features = fe(tiles224)
    assert features.shape == (4, 2048)
    assert 0.01 < expected224.abs().max().item() < 100  # a trained network's scale
    assert_parity(features, expected224)
    assert_parity(fe(tiles256), expected256)
    assert fe.preprocessing.resize is None
    assert fe.license == "GPL-3.0-only" and "RetCCL" in fe.citation


def test_wrong_keys_fail_readably(reference, tmp_path):
    state_dict = dict(reference.state_dict())
    del state_dict["layer4.2.bn3.running_var"]
    state_dict["fc.weight"] = torch.zeros(128, 2048)  # a file saved with its training head
    message = mismatch_message("retccl", tmp_path / "retccl.pth", state_dict)
    assert "layer4.2.bn3.running_var" in message
    assert "fc.weight" in message


def test_missing_from_an_offline_cache_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OfflineWeightsError) as info:
        build(None)
    message = str(info.value)
    assert "jamesdolezal/RetCCL/retccl.pth" in message and "weights=" in message
