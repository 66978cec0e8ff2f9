"""ImageNet extractors: timm architectures with timm's published weight layout."""

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

import histobag
from histobag.errors import ExtractorArgumentError
from tests.helpers import histology_tiles
from tests.parity import assert_parity, build_fp32, normalised, perturbed


def _timm_reference(arch, **kwargs):
    return perturbed(timm.create_model(arch, pretrained=False, **kwargs), seed=7, scale=0.05)


def _save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


@pytest.mark.parametrize(
    ("arch", "tile_px", "mean"),
    [("resnet18", 224, (0.485, 0.456, 0.406)), ("vit_small_patch16_224", 224, (0.5, 0.5, 0.5))],
)
def test_postconv_equals_timm_pre_logits(tmp_path, arch, tile_px, mean):
    ref = _timm_reference(arch)
    path = _save(ref, tmp_path / "model.safetensors")
    fe = build_fp32(f"{arch}_imagenet", path, tile_px=tile_px)
    tiles = histology_tiles(3, tile_px)
    std = (0.229, 0.224, 0.225) if mean[0] != 0.5 else (0.5, 0.5, 0.5)
    with torch.no_grad():
        expected = ref.forward_head(
            ref.forward_features(normalised(tiles, (mean, std))), pre_logits=True
        )
    got = fe(tiles)
    assert got.shape == (3, fe.num_features) == (3, ref.num_features)
    assert_parity(got, expected, min_std=0.05)  # ResNet-18's pooled features vary by ~0.07


def test_layers_are_pooled_and_concatenated(tmp_path):
    ref = _timm_reference("resnet18")
    path = _save(ref, tmp_path / "model.safetensors")
    tiles = histology_tiles(2, 128)
    fe = build_fp32(
        "resnet18_imagenet", path, tile_px=128, layers=["layer3", "postconv"], pooling="max"
    )
    assert fe.num_features == 256 + 512
    x = normalised(tiles)
    captured = {}
    ref.layer3.register_forward_hook(lambda m, i, o: captured.setdefault("l3", o))
    with torch.no_grad():
        post = ref.forward_head(ref.forward_features(x), pre_logits=True)
    expected = torch.cat([captured["l3"].amax(dim=(2, 3)), post], dim=1)
    assert_parity(fe(tiles), expected)


def test_vit_at_another_tile_size_resamples_position_embeddings(tmp_path):
    ref = _timm_reference("vit_tiny_patch16_224")
    path = _save(ref, tmp_path / "model.safetensors")
    fe = histobag.build_feature_extractor(
        "vit_tiny_patch16_224_imagenet", tile_px=256, weights=path, device="cpu"
    )
    assert fe(histology_tiles(2, 256)).shape == (2, 192)
    with pytest.raises(ExtractorArgumentError, match="resize=True"):
        fe(histology_tiles(1, 224))


def test_any_timm_architecture_resolves():
    spec = histobag.extractor_info("mobilenetv3_small_100_imagenet")
    assert spec.pack == "histobag-apache"
    assert spec.license == "Apache-2.0"
    assert "mobilenetv3_small_100_imagenet" not in histobag.list_extractors()
    fe = histobag.build_feature_extractor(
        "mobilenetv3_small_100_imagenet", tile_px=64, weights="random", device="cpu"
    )
    out = fe(np.zeros((2, 64, 64, 3), np.uint8))
    assert out.shape == (2, fe.num_features) and fe.num_features > 0


def test_tile_px_is_required():
    with pytest.raises(ExtractorArgumentError, match=r"tile_px=\.\.\."):
        histobag.build_feature_extractor("resnet18_imagenet", weights="random")


def test_listed_specs_match_timm():
    for name in histobag.list_extractors(tag="imagenet"):
        spec = histobag.extractor_info(name)
        arch = name.removesuffix("_imagenet")
        with torch.device("meta"):  # no weight initialisation: fast
            model = timm.create_model(arch, pretrained=False)
        cfg = model.pretrained_cfg
        assert spec.num_features == model.num_features, name
        assert spec.preprocessing.mean == pytest.approx(cfg["mean"]), name
        assert spec.preprocessing.std == pytest.approx(cfg["std"]), name


def test_default_weights_come_from_timm_hub_repo(monkeypatch):
    """Without weights=, the architecture's default timm repository is requested."""
    from histobag.extractors import weights

    requested = []

    def fake_download(hub, *, model):
        requested.append((hub.repo, hub.filename, model))
        raise histobag.HistobagError("stop here")

    monkeypatch.setattr(weights, "download", fake_download)
    with pytest.raises(histobag.HistobagError, match="stop here"):
        histobag.build_feature_extractor("resnet50_imagenet", tile_px=224)
    assert requested == [("timm/resnet50.a1_in1k", "model.safetensors", "resnet50_imagenet")]
