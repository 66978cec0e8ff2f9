"""``dinov2``: your own DINOv2 runs, against a reference DINOv2 ViT written here.

The reference follows the published DINOv2 architecture (patch embedding, class token,
optional register tokens inserted after the position embedding, pre-norm blocks with
LayerScale and an MLP or fused SwiGLU, optionally grouped into chunks) and the layout of its
checkpoints (``{'teacher': {'backbone.*', 'dino_head.*', ...}}``). Random, perturbed weights
are saved in that layout with a ``config.yaml``, loaded through ``build_feature_extractor``,
and compared in float32 on real histology tiles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import histobag
from histobag.errors import CheckpointMismatchError, ExtractorArgumentError, WeightsError
from histobag_apache import dinov2
from tests.helpers import histology_tiles
from tests.parity import assert_parity, build_fp32, normalised, perturbed, save_checkpoint

SIZE = 64  # crops.global_crops_size of the test runs: 4 x 4 patches of 16 px


# -- reference DINOv2 ViT --------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias, proj_bias):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    def __init__(self, dim, init):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim, bias):
        super().__init__()
        self.fc1, self.act, self.fc2 = (
            nn.Linear(dim, 4 * dim, bias),
            nn.GELU(),
            nn.Linear(4 * dim, dim, bias),
        )

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFused(nn.Module):
    def __init__(self, dim, bias):
        super().__init__()
        hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden, bias), nn.Linear(hidden, dim, bias)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(nn.functional.silu(x1) * x2)


class Block(nn.Module):
    def __init__(self, dim, heads, cfg):
        super().__init__()
        s = cfg["student"]
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, s["qkv_bias"], s["proj_bias"])
        self.ls1 = LayerScale(dim, s["layerscale"]) if s["layerscale"] else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        ffn = Mlp if s["ffn_layer"] == "mlp" else SwiGLUFused
        self.mlp = ffn(dim, s["ffn_bias"])
        self.ls2 = LayerScale(dim, s["layerscale"]) if s["layerscale"] else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class BlockChunk(nn.ModuleList):
    def forward(self, x):
        for block in self:
            x = block(x)
        return x


class DinoViT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        s = cfg["student"]
        dim, depth, heads = dinov2.ARCHS[s["arch"]]
        patch, size, n_reg = (
            s["patch_size"],
            cfg["crops"]["global_crops_size"],
            s["num_register_tokens"],
        )
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (size // patch) ** 2, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, n_reg, dim)) if n_reg else None
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        blocks = [Block(dim, heads, cfg) for _ in range(depth)]
        if s["block_chunks"] > 0:
            size_c = depth // s["block_chunks"]
            chunks = [[nn.Identity()] * i + blocks[i : i + size_c] for i in range(0, depth, size_c)]
            self.blocks = nn.ModuleList(BlockChunk(c) for c in chunks)
        else:
            self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, images):
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(len(x), -1, -1), x[:, 1:]], 1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


# -- helpers --------------------------------------------------------------------------------


def make_cfg(**student):
    base = {**dinov2.DEFAULTS["student"], "arch": "vit_small", **student}
    return {
        "student": base,
        "crops": {"global_crops_size": SIZE},
        "train": {"OFFICIAL_EPOCH_LENGTH": 10},
    }


def save_run(folder: Path, cfg, seed=0, prefix="", training_ckpt=False):
    """A perturbed reference model saved like a DINOv2 run; returns (model, ckpt, cfg path)."""
    torch.manual_seed(seed)
    model = perturbed(DinoViT(cfg), seed=seed)
    backbone = {f"{prefix}backbone.{k}": v for k, v in model.state_dict().items()}
    heads = {
        f"{prefix}dino_head.mlp.0.weight": torch.randn(16, 384),
        f"{prefix}dino_head.last_layer.weight_g": torch.randn(32, 1),
        f"{prefix}ibot_head.mlp.0.weight": torch.randn(16, 384),
    }
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "teacher_checkpoint.pth"
    if training_ckpt:
        teacher = {f"teacher.{k}": v for k, v in {**backbone, **heads}.items()}
        student = {f"student.{k}": v + 1 for k, v in {**backbone, **heads}.items()}
        torch.save({"model": {**teacher, **student}, "iteration": 7}, ckpt)
    else:
        save_checkpoint({**backbone, **heads}, ckpt, nest="teacher")
    cfg_path = folder / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    return model, ckpt, cfg_path


def reference_features(model, tiles: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return model(normalised(tiles))


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return histology_tiles(3, SIZE)


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("student", "prefix", "training_ckpt"),
    [
        ({}, "", False),
        (
            {
                "ffn_layer": "swiglufused",
                "block_chunks": 4,
                "num_register_tokens": 4,
                "ffn_bias": False,
            },
            "module.",
            False,
        ),
        (
            {"ffn_layer": "swiglu", "layerscale": None, "qkv_bias": False, "block_chunks": 2},
            "",
            True,
        ),
    ],
    ids=["mlp", "swiglu-chunks-registers-ddp", "training-checkpoint"],
)
def test_parity_with_reference(student, prefix, training_ckpt, tiles, tmp_path):
    cfg = make_cfg(**student)
    model, ckpt, cfg_path = save_run(tmp_path, cfg, prefix=prefix, training_ckpt=training_ckpt)
    extractor = build_fp32("dinov2", ckpt, cfg=cfg_path)
    assert extractor.num_features == 384 and extractor.license == "Apache-2.0"
    assert str(extractor.dump_config()["kwargs"]["cfg"]) == str(cfg_path)
    got = extractor(tiles)
    expected = reference_features(model, tiles)
    assert got.shape == (3, 384)
    assert_parity(got, expected)
    # the student (training checkpoint) or the heads must not have been loaded
    assert float((got - expected).abs().max()) < float(expected.abs().max()) * 1e-3


def test_cfg_mapping_and_defaults():
    arch = dinov2.read_cfg({"student": {"arch": "vit_giant2", "ffn_layer": "swiglufused"}})
    assert (arch.patch_size, arch.img_size, arch.layerscale) == (16, 224, 1e-5)
    assert arch.embed_dim == 1536 and dinov2.swiglu_hidden(1536) == 4096
    with torch.device("meta"):
        ref = DinoViT(
            {
                "student": {
                    **dinov2.DEFAULTS["student"],
                    "arch": "vit_giant2",
                    "ffn_layer": "swiglufused",
                    "block_chunks": 4,
                    "num_register_tokens": 4,
                },
                "crops": {"global_crops_size": 224},
            }
        )
        net = dinov2.build_network(
            dinov2.read_cfg(
                {"student": {"arch": "vit_giant2", "ffn_layer": "swiglu", "num_register_tokens": 4}}
            )
        )
    adapted = dinov2.adapt_state_dict({f"backbone.{k}": v for k, v in ref.state_dict().items()})
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in adapted.items()} == want
    # mask_token and the class token's position row are folded away (2 x 1536)
    n_ref, n_net = (sum(v.numel() for v in m.parameters()) for m in (ref, net))
    assert n_ref - 2 * 1536 == n_net


def test_readable_errors(tmp_path, tiles):
    with pytest.raises(ExtractorArgumentError, match="needs cfg="):
        histobag.build_feature_extractor("dinov2", weights=tmp_path / "x.pth")
    with pytest.raises(ExtractorArgumentError, match="not found"):
        histobag.build_feature_extractor("dinov2", weights="random", cfg=tmp_path / "missing.yaml")
    with pytest.raises(ExtractorArgumentError, match="vit_small, vit_base"):
        dinov2.read_cfg({"student": {"arch": "vit_huge"}})
    with pytest.raises(ExtractorArgumentError, match="ffn_layer"):
        dinov2.read_cfg({"student": {"ffn_layer": "moe"}})
    cfg = make_cfg()
    _, ckpt, cfg_path = save_run(tmp_path / "run", cfg)
    # the architecture in cfg does not match the checkpoint (vit_base vs vit_small)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(make_cfg(arch="vit_base")))
    with pytest.raises(CheckpointMismatchError, match=r"backbone\.blocks\.0\.attn\.qkv\.weight"):
        histobag.build_feature_extractor("dinov2", weights=ckpt, cfg=tmp_path / "base.yaml")
    torch.save({"teacher": {"dino_head.w": torch.zeros(1)}}, tmp_path / "head.pth")
    with pytest.raises(WeightsError, match=r"teacher_checkpoint\.pth"):
        histobag.build_feature_extractor("dinov2", weights=tmp_path / "head.pth", cfg=cfg_path)
    assert "dinov2" in histobag.list_extractors(tag="ssl")
