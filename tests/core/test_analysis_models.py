"""Saved trained models: folder format, extractor, Features (layers, logits), DatasetFeatures."""

import json

import numpy as np
import pytest
import timm
import torch

import histobag
from histobag.analysis import DatasetFeatures, Features
from histobag.errors import CheckpointMismatchError, ConfigError
from histobag.extractors.saved import extractor_from_saved_model, is_saved_model, save_model
from histobag.slide import WSI
from tests.core.bag_helpers import TILE_PX, TILE_UM, make_slides

LABELS = ["normal", "tumor"]


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=2).eval()


@pytest.fixture(scope="module")
def saved(network, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tumor_model"
    save_model(
        network,
        folder,
        arch="test_resnet",
        tile_px=TILE_PX,
        tile_um=TILE_UM,
        outcome_labels=LABELS,
        outcome="label",
    )
    return folder


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return make_slides(tmp_path_factory.mktemp("modelslides"), n=2)


def _tiles(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, TILE_PX, TILE_PX, 3), dtype=np.uint8)


def _reference(network, tiles):
    """What the network computes on these tiles with the saved (timm) preprocessing."""
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(network.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(network.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        trunk = network.forward_features((x - mean) / std)
        return network.forward_head(trunk, pre_logits=True).numpy(), network.forward_head(
            trunk
        ).numpy()


def test_saved_model_folder_format(saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["format"] == "histobag-model"
    assert config["arch"] == "test_resnet"
    assert config["outcome_labels"] == LABELS
    assert config["model_kwargs"] == {"num_classes": 2}
    assert config["tile_px"] == TILE_PX and config["tile_um"] == TILE_UM
    assert config["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert config["preprocessing"]["interpolation"] == "bilinear"
    assert config["normalizer"] is None
    assert (saved / "model.safetensors").is_file()
    assert is_saved_model(saved) and not is_saved_model(saved.parent)
    with pytest.raises(ConfigError, match="already holds"):
        save_model(torch.nn.Linear(1, 1), saved, arch="x", tile_px=1, tile_um=1, outcome_labels=[])


def test_features_match_the_network_with_layers_and_logits(saved, network):
    tiles = _tiles()
    pre_logits, logits = _reference(network, tiles)
    features = Features(saved, include_logits=True, device="cpu", mixed_precision=False)
    acts, out_logits = features(tiles)
    np.testing.assert_allclose(acts, pre_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out_logits, logits, rtol=1e-4, atol=1e-5)
    assert features.num_features == pre_logits.shape[1]

    two = Features(saved, layers=["layer1", "postconv"], device="cpu", mixed_precision=False)
    stacked = two(tiles)
    width = dict(network.named_modules())["layer1"][-1].conv2.out_channels
    assert stacked.shape == (4, width + pre_logits.shape[1])
    np.testing.assert_allclose(stacked[:, width:], pre_logits, rtol=1e-4, atol=1e-5)


def test_extractor_from_saved_model_records_how_to_rebuild_it(saved):
    fe = extractor_from_saved_model(saved, layers="layer2", device="cpu", mixed_precision=False)
    config = fe.dump_config()
    assert config["extractor"] == str(saved.resolve())
    assert config["kwargs"] == {"layers": ["layer2"], "mixed_precision": False}
    assert fe.tag == "tumor_model" and fe.outcome_labels == LABELS
    # what build_feature_extractor(config["extractor"], **config["kwargs"]) rebuilds
    again = extractor_from_saved_model(config["extractor"], **config["kwargs"])
    tiles = _tiles(2)
    assert torch.equal(fe(tiles), again(tiles))
    assert again.dump_config() == config
    assert fe.weights_sha256 == json.loads((saved / "config.json").read_text())["weights_sha256"]
    with pytest.raises(histobag.HistobagError, match="Unknown layer"):
        extractor_from_saved_model(saved, layers="nope", device="cpu")


def test_wrong_weights_are_refused(saved, tmp_path):
    other = timm.create_model("test_resnet", num_classes=3)
    bad = save_model(
        other, tmp_path / "bad", arch="test_resnet", tile_px=16, tile_um=8, outcome_labels="abc"
    )
    with pytest.raises(CheckpointMismatchError):
        extractor_from_saved_model(saved, weights=bad / "model.safetensors", device="cpu")


def test_features_on_a_wsi_give_masked_grids(saved, slides):
    wsi = WSI(slides / "slide-0.svs", TILE_PX, TILE_UM)
    features = Features(
        saved, include_logits=True, device="cpu", mixed_precision=False, num_workers=0
    )
    acts, logits = features(wsi)
    assert acts.shape[:2] == wsi.grid.shape and logits.shape == (*wsi.grid.shape, 2)
    kept = ~acts.mask[..., 0]
    assert kept.sum() > 20
    assert np.array_equal(kept, ~logits.mask[..., 0])
    row, col = np.argwhere(kept)[0]
    tile = np.array(wsi.read_tile_at(wsi.grid_x[col], wsi.grid_y[row]))
    single_acts, single_logits = features(tile)
    np.testing.assert_allclose(acts.data[row, col], single_acts[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits.data[row, col], single_logits[0], rtol=1e-4, atol=1e-5)


def test_dataset_features_of_a_trained_model(saved, slides, tmp_path):
    ds = histobag.Dataset(slides, tile_px=TILE_PX, tile_um=TILE_UM)
    dsf = DatasetFeatures(
        str(saved), ds, annotations={"slide-0": "tumor", "slide-1": "normal"}, num_workers=0
    )
    assert set(dsf.logits) == {"slide-0", "slide-1"}
    for slide in dsf.slides:
        assert dsf.logits[slide].shape == (len(dsf.activations[slide]), 2)
        assert dsf.activations[slide].shape[1] == dsf.num_features
    means = dsf.logits_mean()
    predicted = dsf.logits_predict()
    for slide, mean in means.items():
        np.testing.assert_allclose(mean, dsf.logits[slide].mean(axis=0), rtol=1e-6)
        assert predicted[slide] == LABELS[int(np.argmax(mean))]
    df = dsf.to_df()
    assert list(df.columns[:4]) == ["slide", "x", "y", "label"]
    assert {"logit_0", "logit_1", f"feature_{dsf.num_features - 1}"} <= set(df.columns)
    assert len(df) == sum(len(a) for a in dsf.activations.values())
    path = dsf.to_csv(tmp_path / "tiles.csv")
    assert path.read_text().splitlines()[0].startswith("slide,x,y,label,feature_0")


def test_analysis_and_models_import_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, histobag, histobag.analysis, histobag.extractors.saved,"
        " histobag.analysis.cli\n"
        "from histobag.extractors.saved import is_saved_model\n"
        "is_saved_model('.')\n"
        "heavy = ['torch', 'timm', 'numpy', 'umap', 'numba', 'matplotlib', 'pandas', 'scipy']\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert proc.stdout.strip() == "[]"


def test_features_of_a_registered_extractor():
    from tests.core.bag_helpers import PIXELNET
    from tests.core.toy_models import registered

    tiles = _tiles(3)
    with registered(PIXELNET):
        features = Features("pixelnet", device="cpu", mixed_precision=False)
        built = histobag.build_feature_extractor("pixelnet", device="cpu", mixed_precision=False)
        np.testing.assert_array_equal(features(tiles), built(tiles).numpy())
        assert np.array_equal(Features(built)(tiles), features(tiles))
        with pytest.raises(histobag.HistobagError, match="include_logits"):
            Features("pixelnet", include_logits=True)


def test_build_feature_extractor_and_bags_accept_a_saved_model_folder(
    saved, network, slides, tmp_path
):
    extractor = histobag.build_feature_extractor(str(saved), mixed_precision=False, device="cpu")
    tiles = _tiles()
    expected, _ = _reference(network, tiles)
    np.testing.assert_allclose(extractor(tiles).numpy(), expected, atol=1e-5)

    dataset = histobag.Dataset(slides, tile_px=TILE_PX, tile_um=TILE_UM)
    report = dataset.generate_feature_bags(
        str(saved), tmp_path / "bags", progress=False, num_workers=0
    )
    assert report.ok and report.done
    rebuilt, _ = histobag.rebuild_extractor(tmp_path / "bags")
    assert rebuilt.dump_config() == histobag.build_feature_extractor(str(saved)).dump_config()
