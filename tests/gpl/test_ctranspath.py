"""CTransPath: parity with the authors' timm 0.5.4 model, loading the official file layout."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from torch import nn

import histobag
from histobag.errors import ExtractorArgumentError
from histobag.extractors import registry
from histobag.extractors.registry import WeightsMismatchWarning
from histobag_gpl.ctranspath import SAVED_BUFFERS, build_ctranspath, official_to_timm
from tests.gpl.helpers import reference_batch
from tests.helpers import histology_tiles
from tests.parity import (
    assert_parity,
    build_fp32,
    mismatch_message,
    perturbed,
    save_checkpoint,
)

with warnings.catch_warnings():  # timm 0.5.4 still calls torch.jit.script at import
    warnings.simplefilter("ignore", FutureWarning)
    from timm_ctp.models.swin_transformer import swin_tiny_patch4_window7_224

REPO, FILENAME = "jamesdolezal/CTransPath", "ctranspath.pth"


class ReferenceConvStem(nn.Module):
    """CTransPath's stem from the paper, as a timm 0.5.4 ``embed_layer`` (B, L, C tokens):
    3x3/2 conv 3→E/8 (no bias), BN, ReLU; 3x3/2 conv E/8→E/4 (no bias), BN, ReLU; 1x1 conv
    E/4→E (bias); LayerNorm(E)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None):
        super().__init__()
        side = img_size if isinstance(img_size, int) else img_size[0]
        self.grid_size = (side // patch_size, side // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 8, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(embed_dim // 8),
            nn.ReLU(inplace=True),
            nn.Conv2d(
                embed_dim // 8, embed_dim // 4, kernel_size=3, stride=2, padding=1, bias=False
            ),
            nn.BatchNorm2d(embed_dim // 4),
            nn.ReLU(inplace=True),
            nn.Conv2d(embed_dim // 4, embed_dim, kernel_size=1),
        )
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


def reference_ctranspath() -> nn.Module:
    """The authors' model: timm 0.5.4 Swin-T with the conv stem, head replaced by identity."""
    torch.manual_seed(0)
    with warnings.catch_warnings():  # 0.5.4 calls torch.meshgrid without indexing=
        warnings.filterwarnings("ignore", "torch.meshgrid", UserWarning)
        model = swin_tiny_patch4_window7_224(embed_layer=ReferenceConvStem)
    model.head = nn.Identity()
    return model.eval()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def saved_buffers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of a state dict that timm 1.x recomputes instead of saving."""
    return {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] in SAVED_BUFFERS}


@pytest.fixture(scope="module")
def reference_and_pristine_buffers() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The reference with every parameter and buffer perturbed (attention masks and BatchNorm
    statistics too), and its masks and indices as 0.5.4 computed them."""
    model = reference_ctranspath()
    pristine = {k: v.clone() for k, v in saved_buffers(model.state_dict()).items()}
    return perturbed(model, seed=1), pristine


@pytest.fixture(scope="module")
def reference(reference_and_pristine_buffers) -> nn.Module:
    return reference_and_pristine_buffers[0]


@pytest.fixture(scope="module")
def official_file(reference, tmp_path_factory) -> Path:
    """Random weights saved as the authors published theirs: ``{'model': state_dict}``."""
    path = tmp_path_factory.mktemp("ctranspath") / FILENAME
    return save_checkpoint(reference.state_dict(), path, nest="model")


@pytest.fixture(scope="module")
def reference_features(reference, tiles224) -> torch.Tensor:
    with torch.inference_mode():
        return reference(reference_batch(tiles224))


def build(weights, **kwargs) -> histobag.FeatureExtractor:
    return build_fp32("ctranspath", weights, **kwargs)


def test_checkpoint_has_the_official_timm054_layout(official_file):
    state_dict = torch.load(official_file, weights_only=True)["model"]
    assert "layers.0.downsample.reduction.weight" in state_dict  # end of stage 0 in 0.5.4
    assert not any(k.startswith("layers.3.downsample") for k in state_dict)
    assert {
        "layers.0.blocks.1.attn_mask",
        "layers.3.blocks.0.attn.relative_position_index",
        "patch_embed.proj.1.running_var",
        "patch_embed.norm.weight",
    } <= set(state_dict)
    assert "layers.3.blocks.1.attn_mask" not in state_dict  # 7x7 stage: no shifted window
    assert not any(k.startswith("head") for k in state_dict)


def test_parity_with_reference(official_file, reference_features, tiles224):
    with pytest.warns(WeightsMismatchWarning):  # random weights are not the official file
        fe = build(official_file)
    features = fe(tiles224)
    assert features.shape == (4, 768)
    assert_parity(features, reference_features)
    assert fe.weights_sha256 == sha256(official_file)
    assert fe.license == "GPL-3.0-only" and "Transformer-based unsupervised" in fe.citation


def test_recomputed_buffers_equal_the_saved_ones(reference_and_pristine_buffers):
    """timm 1.x computes the same masks and indices that 0.5.4 saves, so loading the file's
    buffers changes nothing for the official checkpoint."""
    pristine = official_to_timm(reference_and_pristine_buffers[1])
    ours = saved_buffers(
        build_ctranspath(histobag.extractor_info("ctranspath")).module.state_dict()
    )
    assert len(pristine) == 12 + 5  # an index per block, a mask per shifted-window block
    assert sorted(ours) == sorted(pristine)
    for key, value in ours.items():
        assert torch.equal(value, pristine[key]), key


def write_hf_cache(root: Path, weights: Path) -> Path:
    """A Hugging Face cache holding ``weights`` as REPO/FILENAME on ``main``, laid out as
    ``hf_hub_download`` leaves it (blob named by digest, snapshot symlink, ref)."""
    repo_dir = root / f"models--{REPO.replace('/', '--')}"
    commit = hashlib.sha1(b"histobag-gpl test").hexdigest()
    blob = repo_dir / "blobs" / sha256(weights)
    blob.parent.mkdir(parents=True)
    shutil.copyfile(weights, blob)
    snapshot = repo_dir / "snapshots" / commit / FILENAME
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(Path("..", "..", "blobs", blob.name))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return root


def test_loads_from_the_hugging_face_cache(
    official_file, reference_features, tiles224, tmp_path, monkeypatch
):
    cache = write_hf_cache(tmp_path / "hub", official_file)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    with pytest.warns(WeightsMismatchWarning, match="not the official ctranspath checkpoint"):
        fe = build(None)
    assert fe.weights_source == f"hf://{REPO}/{FILENAME}"
    assert fe.weights_sha256 == sha256(official_file)
    # One tile suffices here: the parity test covers the batch.
    assert_parity(fe(tiles224[:1]), reference_features[:1])


def test_official_digest_loads_without_warning(official_file, monkeypatch):
    spec = histobag.extractor_info("ctranspath")
    assert spec.sha256 == "7c998680060c8743551a412583fac689db43cec07053b72dfec6dcd810113539"
    official = spec.replace(sha256=sha256(official_file))
    monkeypatch.setattr(registry, "extractor_info", lambda name: official)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightsMismatchWarning)
        fe = build(official_file)
    assert fe.weights_sha256 == official.sha256


@pytest.mark.parametrize(
    ("rename", "named"),
    [
        (
            ("layers.2.blocks.3.attn.qkv.weight", "layers.2.blocks.3.attn.qkv_w"),
            ["layers.2.blocks.3.attn.qkv.weight", "layers.2.blocks.3.attn.qkv_w"],
        ),
        (("layers.0.blocks.1.attn_mask", None), ["layers.0.blocks.1.attn_mask"]),
        # patch merging moves between stages in timm 1.x: the error must use the file's name
        (("layers.0.downsample.norm.weight", None), ["layers.0.downsample.norm.weight"]),
    ],
    ids=["renamed", "missing-buffer", "missing-patch-merging"],
)
def test_wrong_keys_fail_readably(reference, tmp_path, rename, named):
    old, new = rename
    state_dict = dict(reference.state_dict())
    value = state_dict.pop(old)
    if new is not None:
        state_dict[new] = value
    message = mismatch_message("ctranspath", tmp_path / FILENAME, state_dict, nest="model")
    for key in named:
        assert key in message


def test_only_224_input_unless_resized():
    tile = histology_tiles(1, 256)
    with pytest.raises(ExtractorArgumentError, match=r"resize=True"):
        build("random")(tile)
    resized = build("random", resize=True)
    assert resized.preprocessing.resize == 224
    out = resized(tile)
    assert out.shape == (1, 768) and bool(torch.isfinite(out).all())
