"""CHIEF: the slide encoder (``chief``) and its tile encoder (``chief-ctranspath``).

The slide encoder is checked against :class:`OfficialCHIEF`, a re-statement of the official
``models/CHIEF.py`` (``CHIEF(size_arg="small", dropout=True, n_classes=2)``, as the official
``Get_CHIEF_WSI_level_feature.py`` and TRIDENT build it) and of its ``forward`` on 2-D tile
features with ``torch.mm``; its ``WSI_feature`` is what TRIDENT returns. Random weights are saved
as the published ``CHIEF_pretraining.pth`` (a flat state dict of the whole model), loaded
through ``histobag.build_feature_extractor`` and compared in float32 on a generated bag of
more than 2,000 tiles. The tile encoder is checked against the authors' timm 0.5.4 CTransPath
(``timm-ctp``), loading ``{'model': state_dict}`` as ``CHIEF_CTransPath.pth`` is published.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

import histobag
from histobag.errors import ExtractorArgumentError, MissingDependencyError, WeightsError
from histobag.specs import IMAGENET_MEAN, IMAGENET_STD
from histobag_noncommercial import chief, chief_specs
from tests.gpl.helpers import reference_batch
from tests.gpl.test_ctranspath import reference_ctranspath
from tests.helpers import histology_tiles
from tests.parity import (
    assert_parity,
    build_fp32,
    card_preprocessing_gap,
    mismatch_message,
    perturbed,
    save_checkpoint,
)
from tests.slide_bags import generated_bag

#: Level-0 side of a 256 px tile at 10x on a 0.5 µm/px slide.
EXTENT_PX = 512

#: Every tensor of ``CHIEF_pretraining.pth`` and its shape, from the official module tree
#: (size "small" = [768, 512, 256], gated attention with dropout, 2 classes, 19 organs).
OFFICIAL_KEYS = {
    "attention_net.0.weight": (512, 768),
    "attention_net.0.bias": (512,),
    "attention_net.3.attention_a.0.weight": (256, 512),
    "attention_net.3.attention_a.0.bias": (256,),
    "attention_net.3.attention_b.0.weight": (256, 512),
    "attention_net.3.attention_b.0.bias": (256,),
    "attention_net.3.attention_c.weight": (1, 256),
    "attention_net.3.attention_c.bias": (1,),
    "classifiers.weight": (2, 512),
    "classifiers.bias": (2,),
    "instance_classifiers.0.weight": (2, 512),
    "instance_classifiers.0.bias": (2,),
    "instance_classifiers.1.weight": (2, 512),
    "instance_classifiers.1.bias": (2,),
    "att_head.fc1.weight": (256, 512),
    "att_head.fc1.bias": (256,),
    "att_head.fc2.weight": (1, 256),
    "att_head.fc2.bias": (1,),
    "text_to_vision.0.weight": (512, 768),
    "text_to_vision.0.bias": (512,),
    "organ_embedding": (19, 768),
}


# ------------------------------------------------------------------------------------------
# The official slide model, re-stated
# ------------------------------------------------------------------------------------------


class OfficialGatedAttention(nn.Module):
    """``Attn_Net_Gated(L=512, D=256, dropout=True, n_classes=1)``: returns (scores, input)."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(512, 256), nn.Tanh(), nn.Dropout(0.25))
        self.attention_b = nn.Sequential(nn.Linear(512, 256), nn.Sigmoid(), nn.Dropout(0.25))
        self.attention_c = nn.Linear(256, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attention_c(self.attention_a(x).mul(self.attention_b(x))), x


class OfficialAttHead(nn.Module):
    """``Att_Head(512, 256)``: fc1, ReLU, fc2, sigmoid (unused by the embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(512, 256)
        self.fc2 = nn.Linear(256, 1)


class OfficialCHIEF(nn.Module):
    """The official pretraining model with ``size_arg="small", dropout=True, n_classes=2``;
    ``organ_embedding`` random instead of the authors' ``Text_emdding.pth``."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_net = nn.Sequential(
            nn.Linear(768, 512), nn.ReLU(), nn.Dropout(0.25), OfficialGatedAttention()
        )
        self.classifiers = nn.Linear(512, 2)
        self.instance_classifiers = nn.ModuleList([nn.Linear(512, 2) for _ in range(2)])
        self.att_head = OfficialAttHead()
        self.text_to_vision = nn.Sequential(nn.Linear(768, 512), nn.ReLU(), nn.Dropout(p=0.25))
        self.register_buffer("organ_embedding", torch.randn(19, 768))

    def forward(self, h: torch.Tensor, x_anatomic: torch.Tensor) -> dict[str, torch.Tensor]:
        h_ori = h
        A, h = self.attention_net(h)
        A = torch.transpose(A, 1, 0)
        A_raw = A
        A = F.softmax(A, dim=1)
        embed_batch = self.text_to_vision(self.organ_embedding[x_anatomic])
        WSI_feature = torch.mm(A, h)
        M = WSI_feature + embed_batch
        return {
            "bag_logits": self.classifiers(M),
            "attention_raw": A_raw,
            "WSI_feature": torch.mm(A, h_ori),
            "WSI_feature_anatomical": M,
        }


@pytest.fixture(scope="module")
def reference() -> OfficialCHIEF:
    torch.manual_seed(0)
    model = perturbed(OfficialCHIEF(), seed=3)
    with torch.no_grad():  # a peaked attention (about 60 tiles carry it), as a trained one
        model.attention_net[3].attention_c.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def official_file(reference: OfficialCHIEF, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chief") / chief_specs.SLIDE_WEIGHTS
    return save_checkpoint(reference.state_dict(), path)  # flat, as the authors load it


@pytest.fixture(scope="module")
def bag() -> tuple[np.ndarray, np.ndarray]:
    return generated_bag(n_tiles=2000, num_features=768, extent_px=EXTENT_PX)


@pytest.fixture(scope="module")
def extractor(official_file: Path) -> histobag.FeatureExtractor:
    return build_fp32("chief", official_file)


def reference_embedding(reference: OfficialCHIEF, features: np.ndarray) -> torch.Tensor:
    """TRIDENT's call: organ index 0, ``WSI_feature`` (1, 768)."""
    with torch.inference_mode():
        return reference(torch.from_numpy(features), torch.tensor([0]))["WSI_feature"]


# ------------------------------------------------------------------------------------------
# Slide encoder
# ------------------------------------------------------------------------------------------


def test_checkpoint_layout_is_the_official_one(reference: OfficialCHIEF) -> None:
    """The re-stated official model, CHIEF's module and the manifest agree key by key."""
    official = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in chief.CHIEFSlideEncoder().state_dict().items()}
    assert official == OFFICIAL_KEYS
    assert ours == OFFICIAL_KEYS


def test_parity_with_the_official_model(
    extractor: histobag.FeatureExtractor, reference: OfficialCHIEF, bag: tuple
) -> None:
    features, coords = bag
    assert len(features) >= 2000
    expected = reference_embedding(reference, features)[0]
    got = extractor(features, coords, extent_px=EXTENT_PX)
    assert got.dtype == torch.float32 and got.shape == (768,)
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
    # The attention is far from uniform, so a wrong score path could not pass.
    with torch.inference_mode():
        scores = reference.attention_net(torch.from_numpy(features))[0].squeeze(-1)
    weights = scores.softmax(0)
    assert float(1 / (weights**2).sum()) < len(features) / 10  # effective number of tiles
    assert float((expected - torch.from_numpy(features).mean(0)).abs().max()) > 0.1
    # The per-tile scores, for heatmaps, are the official attention_raw.
    with torch.inference_mode():
        raw = reference(torch.from_numpy(features), torch.tensor([0]))["attention_raw"]
        ours = extractor.model.attention_scores(torch.from_numpy(features)[None])
    torch.testing.assert_close(ours, raw, atol=1e-5, rtol=0)


def test_organ_index_does_not_change_the_embedding(reference: OfficialCHIEF, bag: tuple) -> None:
    """TRIDENT always passes organ 0: the official WSI_feature does not depend on it."""
    features = torch.from_numpy(bag[0][:300])
    with torch.inference_mode():
        outputs = [reference(features, torch.tensor([i]))["WSI_feature"] for i in (0, 7, 18)]
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])


def test_coordinates_and_tile_order_are_ignored(
    extractor: histobag.FeatureExtractor, bag: tuple
) -> None:
    features, coords = bag
    first = extractor(features, coords, extent_px=EXTENT_PX)
    order = np.random.default_rng(0).permutation(len(features))
    shuffled = extractor(features[order], coords[::-1].copy(), extent_px=EXTENT_PX)
    torch.testing.assert_close(shuffled, first, atol=1e-6, rtol=1e-5)


def test_runs_in_float32_under_autocast(official_file: Path, bag: tuple) -> None:
    """The official model runs in float32; bfloat16 autocast must not reach the pooling."""
    model = chief.CHIEFSlideEncoder()
    state = torch.load(official_file, weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    features = torch.from_numpy(bag[0])[None]
    with torch.inference_mode():
        plain = model(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(features)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain, atol=1e-6, rtol=0)


def test_refuses_other_shapes() -> None:
    model = chief.CHIEFSlideEncoder()
    with pytest.raises(ExtractorArgumentError, match="768"):
        model(torch.zeros(1, 5, 1536))
    with pytest.raises(ExtractorArgumentError, match="without tiles"):
        model(torch.zeros(1, 0, 768))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("drop", "organ_embedding"),
        ("rename", "attention_net.3.attention_c.weight"),
    ],
)
def test_other_files_are_refused_by_key_name(
    reference: OfficialCHIEF, tmp_path: Path, change: str, named: str
) -> None:
    state = dict(reference.state_dict())
    if change == "drop":
        del state[named]
    else:
        state["attention_net.3.attention_c.w"] = state.pop(named)
    message = mismatch_message("chief", tmp_path / chief_specs.SLIDE_WEIGHTS, state)
    assert named in message


def test_without_weights_says_where_to_get_them() -> None:
    with pytest.raises(WeightsError) as caught:
        histobag.build_feature_extractor("chief", device="cpu")
    message = str(caught.value)
    assert "weights=" in message and chief_specs.WEIGHTS_FOLDER in message
    assert chief_specs.SLIDE_WEIGHTS in message
    with pytest.raises(WeightsError, match=chief_specs.TILE_WEIGHTS):
        histobag.build_feature_extractor("chief-ctranspath", device="cpu")


def test_slide_spec() -> None:
    spec = histobag.extractor_info("chief")
    assert spec.pack == "histobag-noncommercial"
    assert spec.kind == "tile_features" and spec.num_features == 768
    assert (spec.license, spec.license_url) == (
        "LicenseRef-CHIEF",
        "https://github.com/hms-dbmi/CHIEF#license",
    )
    assert spec.hf_repo is None and spec.weights_required
    assert spec.hf_filename == "CHIEF_pretraining.pth" and spec.checkpoint_keys == ()
    need = spec.slide_input
    assert need.tile_encoders == ("chief-ctranspath",) and spec.tile_encoder == "chief-ctranspath"
    assert (need.tile_px, need.magnification, need.tile_um) == (256, 10.0, 256.0)
    assert "non-commercial" in spec.description
    assert "Nature" in spec.citation and spec.citation.count("{") == spec.citation.count("}")
    assert histobag.extractor_info("chief-slide").name == "chief"


# ------------------------------------------------------------------------------------------
# Tile encoder
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tile_reference() -> nn.Module:
    return perturbed(reference_ctranspath(), seed=5)


@pytest.fixture(scope="module")
def tile_file(tile_reference: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chief-ctranspath") / chief_specs.TILE_WEIGHTS
    return save_checkpoint(tile_reference.state_dict(), path, nest="model")


def test_tile_encoder_parity(tile_reference: nn.Module, tile_file: Path) -> None:
    tiles = histology_tiles(4, 224)
    with torch.inference_mode():
        expected = tile_reference(reference_batch(tiles))
    fe = build_fp32("chief-ctranspath", tile_file)
    got = fe(tiles)
    assert got.shape == (4, 768)
    assert_parity(got, expected)
    assert fe.license == "LicenseRef-CHIEF" and fe.num_features == 768


def official_transform(*, pil: bool) -> transforms.Compose:
    """``Get_CHIEF_patch_feature.py``: Resize(224) (bilinear), ToTensor, Normalize(ImageNet);
    on float tensors without ToTensor."""
    resize = transforms.Resize(224, antialias=True)
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    steps = [resize, transforms.ToTensor(), normalize] if pil else [resize, normalize]
    return transforms.Compose(steps)


@pytest.mark.parametrize("tile_px", [224, 256, 512])
def test_tile_preprocessing_matches_the_official_transform(tile_px: int) -> None:
    diff, on_tensors = card_preprocessing_gap("chief-ctranspath", official_transform, tile_px, 224)
    if tile_px == 224:  # nothing resampled
        assert float(diff.max()) <= 1e-6
    else:  # PIL rounds the resized pixels to uint8
        assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.06
    assert on_tensors <= 1e-4


def test_tile_encoder_needs_the_gpl_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "histobag_gpl.ctranspath", None)  # import fails
    with pytest.raises(MissingDependencyError, match="pip install histobag-gpl"):
        histobag.build_feature_extractor("chief-ctranspath", weights="random", device="cpu")


def test_tile_spec() -> None:
    spec = histobag.extractor_info("chief-ctranspath")
    assert spec.pack == "histobag-noncommercial" and spec.kind == "tiles"
    assert (spec.num_features, spec.input_size) == (768, 224)
    assert spec.hf_repo is None and spec.weights_required
    assert (spec.hf_filename, spec.checkpoint_keys) == ("CHIEF_CTransPath.pth", ("model",))
    assert spec.license == "LicenseRef-CHIEF"
    assert chief_specs.WEIGHTS_FOLDER in spec.weights_help
    assert histobag.extractor_info("ctranspath-chief").name == "chief-ctranspath"
