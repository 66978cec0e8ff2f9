"""MUSK's image and text branches against a reference written from the official torchscale
BEiT-3 code.

``Reference*`` below follows lilab-stanford/MUSK's copy of torchscale step by step (fairseq-style
``(b h) l d`` attention with the query pre-scaled and a float32 softmax, ``MultiwayNetwork``
switched by a split position, ``PositionalEmbedding`` counting from 2, ``MultiScaleForward``'s
bicubic resizing and chessboard split), independently of the pack's module. A perturbed
reference (full width, two layers) is saved as ``model.safetensors``, loaded through
``histobag.build_feature_extractor`` and compared on real histology tiles; the full-size key
names and shapes are compared on the meta device. Text: a tiny SentencePiece model trained here
is saved as ``tokenizer.spm`` (the official file's name and format) and read both by the pack
and by a reference of transformers 4's ``XLMRobertaTokenizer`` + the official
``utils.xlm_tokenizer``; the embeddings are ``MUSK.forward(text_description, padding_mask,
with_head=True, out_norm=True)[1]``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

import histobag
from histobag.errors import CheckpointMismatchError, ExtractorArgumentError
from histobag_noncommercial import musk, musk_tokenizer
from tests.helpers import histology_tiles
from tests.parity import (
    assert_imports_no_heavy_modules,
    assert_parity,
    build_fp32,
    card_preprocessing_gap,
    perturbed,
    registered_variant,
    to_float,
)

TEST_DEPTH = 2
TEST_VOCAB = 100
#: Narrower than the published 1024 (16 heads) so that 384 px tiles run in seconds on a CPU;
#: the full width is checked on the meta device.
TEST_WIDTH, TEST_HEADS = 256, 4


class RefMultiway(nn.Module):
    """torchscale's MultiwayNetwork: ``A`` before the split position, ``B`` after."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.A = module
        self.B = copy.deepcopy(module)
        self.split_position = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_position == -1:
            return self.A(x)
        if self.split_position == 0:
            return self.B(x)
        x1, x2 = torch.split(x, [self.split_position, x.size(1) - self.split_position], dim=1)
        return torch.cat([self.A(x1), self.B(x2)], dim=1)


class RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scaling = heads, (dim // heads) ** -0.5
        self.k_proj = RefMultiway(nn.Linear(dim, dim))
        self.v_proj = RefMultiway(nn.Linear(dim, dim))
        self.q_proj = RefMultiway(nn.Linear(dim, dim))
        self.out_proj = RefMultiway(nn.Linear(dim, dim))
        self.inner_attn_ln = RefMultiway(nn.LayerNorm(dim, eps=1e-5))

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # 'b l (h d) -> (b h) l d'
            return t.view(b, n, self.heads, -1).permute(0, 2, 1, 3).reshape(b * self.heads, n, -1)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        q = q * self.scaling
        scores = torch.bmm(q, k.transpose(1, 2))
        if key_padding_mask is not None:  # '(b h) t s' masked where the key is padding
            scores = scores.view(b, self.heads, n, n)
            scores = scores.masked_fill(key_padding_mask[:, None, None, :].bool(), float("-inf"))
            scores = scores.view(b * self.heads, n, n)
        weights = F.softmax(scores, dim=-1, dtype=torch.float32)
        attn = torch.bmm(weights.type_as(q), v)
        attn = attn.view(b, self.heads, n, -1).permute(0, 2, 1, 3).reshape(b, n, d)
        return self.out_proj(self.inner_attn_ln(attn))


class RefFFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = self.fc1(x.reshape(-1, x.size(-1)))
        x = F.gelu(x.float()).type_as(x)
        return self.fc2(self.ffn_layernorm(x)).view(shape)


class RefLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = RefAttention(dim, heads)
        self.self_attn_layer_norm = RefMultiway(nn.LayerNorm(dim, eps=1e-5))
        self.ffn = RefMultiway(RefFFN(dim, 4 * dim))
        self.final_layer_norm = RefMultiway(nn.LayerNorm(dim, eps=1e-5))

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        x = self.self_attn(self.self_attn_layer_norm(x), padding) * 1.0 + x  # no deepnorm
        return self.ffn(self.final_layer_norm(x)) + x


class RefMUSK(nn.Module):
    """``musk_large_patch16_384`` (embedding width 1024, 16 heads, 384 px, 16 px patches)."""

    def __init__(
        self, depth: int = 24, vocab: int = 64010, dim: int = 1024, heads: int = 16
    ) -> None:
        super().__init__()
        self.dim, patches = dim, (384 // 16) ** 2
        self.beit3 = nn.Module()
        self.beit3.text_embed = nn.Embedding(vocab, dim)
        ve = self.beit3.vision_embed = nn.Module()
        ve.proj = nn.Conv2d(3, dim, kernel_size=16, stride=16)
        ve.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        ve.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        enc = self.beit3.encoder = nn.Module()
        enc.embed_positions = nn.Module()
        enc.embed_positions.A = nn.Embedding(patches + 1 + 2, dim)
        enc.embed_positions.B = nn.Embedding(1024, dim)
        enc.layers = nn.ModuleList(RefLayer(dim, heads) for _ in range(depth))
        enc.layer_norm = RefMultiway(nn.LayerNorm(dim, eps=1e-5))
        self.language_head = nn.Linear(dim, dim, bias=False)
        self.vision_head = nn.Linear(dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def cls(self, image: torch.Tensor) -> torch.Tensor:
        """BEiT3(visual_tokens=image)['encoder_out'][:, 0]: split position -1 everywhere."""
        ve, enc = self.beit3.vision_embed, self.beit3.encoder
        x = ve.proj(image).flatten(2).transpose(1, 2)
        x = torch.cat((ve.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        positions = torch.arange(2, x.size(1) + 2).long().unsqueeze(0)
        x = x + F.embedding(positions, enc.embed_positions.A.weight)
        x = x * (1 - torch.zeros(x.shape[:2]).bool().unsqueeze(-1).type_as(x))
        for layer in enc.layers:
            x = layer(x)
        return enc.layer_norm(x)[:, 0]

    def set_split_position(self, position: int) -> None:
        """torchscale's ``set_split_position``: -1 image tokens only (A), 0 text only (B)."""
        for module in self.modules():
            if isinstance(module, RefMultiway):
                module.split_position = position

    def text(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """``MUSK.forward(text_description=ids, padding_mask=padding, with_head=True,
        out_norm=True)[1]``: BEiT3(textual_tokens, text_padding_position) at split position 0."""
        enc = self.beit3.encoder
        self.set_split_position(0)
        try:
            x = self.beit3.text_embed(ids)
            positions = torch.arange(2, x.size(1) + 2).long().unsqueeze(0)
            x = x + F.embedding(positions, enc.embed_positions.B.weight)
            x = x * (1 - padding.unsqueeze(-1).type_as(x))
            for layer in enc.layers:
                x = layer(x, padding)
            cls = enc.layer_norm(x)[:, 0]
        finally:
            self.set_split_position(-1)
        return F.normalize(self.language_head(cls), dim=-1)

    def forward(self, image: torch.Tensor, *, ms_aug: bool, with_head: bool) -> torch.Tensor:
        """``MUSK.forward(image=..., out_norm=False, return_global=True)[0]``."""
        if ms_aug:
            out = multi_scale_forward(self, image)
            return self.vision_head(out[:, : self.dim]) if with_head else out
        out = self.cls(image)
        return self.vision_head(out) if with_head else out


def multi_scale_forward(model: RefMUSK, image: torch.Tensor) -> torch.Tensor:
    """``MultiScaleForward(model, image, scales=[1, 2])`` of musk/utils.py."""
    b, _, size, _ = image.shape
    outs = []
    for scale in (1, 2):
        x = F.interpolate(image.to(torch.float32), size=size * scale, mode="bicubic")
        n = scale  # ceil(size * scale / size) splits per side
        # 'b c (nh h) (nw w) -> (nh nw b) c h w'
        x = (
            x.view(b, 3, n, size, n, size)
            .permute(2, 4, 0, 1, 3, 5)
            .reshape(n * n * b, 3, size, size)
        )
        outs.append(torch.cat([model.cls(chunk) for chunk in x.split(b)]))
    up = outs[1].view(-1, b, outs[1].shape[-1]).permute(1, 0, 2)  # '(n b) c -> b n c'
    return torch.cat([outs[0], up.mean(1)], dim=-1)


def card_transform(*, pil: bool) -> Any:
    steps: list[Any] = [
        T.Resize(384, interpolation=InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop((384, 384)),
    ]
    if pil:
        steps.append(T.ToTensor())
    return T.Compose([*steps, T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


def small_musk(spec: histobag.ExtractorSpec, **kwargs: Any) -> Any:
    arch = musk.BEiT3Arch(
        width=TEST_WIDTH, heads=TEST_HEADS, depth=TEST_DEPTH, vocab_size=TEST_VOCAB
    )
    return musk.build_musk_image(arch, **kwargs)


def reduced() -> contextlib.AbstractContextManager[str]:
    return registered_variant("musk", f"{__name__}:small_musk", suffix=f"-depth{TEST_DEPTH}")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RefMUSK]:
    """(model.safetensors as on the Hub, the perturbed reference it holds)."""
    torch.manual_seed(0)
    reference = perturbed(RefMUSK(TEST_DEPTH, TEST_VOCAB, TEST_WIDTH, TEST_HEADS), seed=5)
    path = tmp_path_factory.mktemp("musk") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    return path, reference


@pytest.fixture(scope="module")
def tiles() -> Any:
    return histology_tiles(2, 512, seed=2)


@pytest.mark.parametrize(
    ("kwargs", "official", "width"),
    [
        ({}, {"ms_aug": True, "with_head": False}, 2 * TEST_WIDTH),
        ({"multiscale": False}, {"ms_aug": False, "with_head": False}, TEST_WIDTH),
        ({"projection": True}, {"ms_aug": False, "with_head": True}, TEST_WIDTH),
    ],
)
def test_embeddings_match_official(
    saved: Any, tiles: Any, kwargs: dict[str, Any], official: dict[str, Any], width: int
) -> None:
    path, reference = saved
    with reduced() as name:
        extractor = build_fp32(name, path, **kwargs)
    ours = extractor(tiles)
    with torch.inference_mode():
        expected = reference(card_transform(pil=False)(to_float(tiles)), **official)
    assert ours.shape == (2, width) and extractor.num_features == width
    assert_parity(ours, expected)


def test_projection_with_multiscale_is_the_projection(saved: Any, tiles: Any) -> None:
    """The official code projects only the first scale's class token under ms_aug."""
    path, reference = saved
    with reduced() as name:
        both = build_fp32(name, path, projection=True, multiscale=True)
        head = build_fp32(name, path, projection=True)
    assert torch.equal(both(tiles), head(tiles))
    with torch.inference_mode():
        expected = reference(
            card_transform(pil=False)(to_float(tiles)), ms_aug=True, with_head=True
        )
    assert_parity(both(tiles), expected)


def test_bad_arguments_and_sizes(saved: Any) -> None:
    with reduced() as name:
        with pytest.raises(ExtractorArgumentError, match="multiscale"):
            build_fp32(name, "random", multiscale="yes")
        extractor = build_fp32(name, "random", resize=False, center_crop=False)
        with pytest.raises(ExtractorArgumentError, match="384"):
            extractor(histology_tiles(1, 224))


def test_wrong_key_is_named(saved: Any, tmp_path: Path) -> None:
    state = load_file(saved[0])
    key = "beit3.encoder.layers.1.self_attn.inner_attn_ln.A.weight"
    state[key.replace("inner_attn_ln", "inner_ln")] = state.pop(key)
    save_file(state, tmp_path / "model.safetensors")
    with reduced() as name, pytest.raises(CheckpointMismatchError, match="inner_attn_ln"):
        build_fp32(name, tmp_path / "model.safetensors")


@pytest.mark.parametrize("tile_px", [224, 256, 512])
def test_preprocessing_matches_card_pipeline(tile_px: int) -> None:
    diff, on_tensors = card_preprocessing_gap("musk", card_transform, tile_px, 384)
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.1  # resized to 384 from all
    assert on_tensors <= 1e-4


def test_full_size_checkpoint_layout() -> None:
    """On the meta device: the real factory's tensors are exactly the official model's."""
    spec = histobag.extractor_info("musk")
    with torch.device("meta"):
        official = RefMUSK()
        build = spec.load_factory()(spec)
    hub = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    assert "beit3.encoder.layers.23.ffn.B.ffn_layernorm.bias" in hub
    assert hub["beit3.encoder.embed_positions.A.weight"] == (579, 1024)
    assert {k: tuple(v.shape) for k, v in build.module.state_dict().items()} == hub
    assert build.fixed_input_size == 384 and build.num_features == 2048


def test_spec() -> None:
    spec = histobag.extractor_info("musk")
    assert spec.pack == "histobag-noncommercial"
    assert spec.license == "CC-BY-NC-ND-4.0"
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == (
        "xiangjx/musk",
        "model.safetensors",
        True,
    )
    assert (spec.num_features, spec.input_size) == (2048, 384)
    assert "Xiang" in spec.citation and spec.citation.count("{") == spec.citation.count("}")


def test_listing_imports_no_torch() -> None:
    assert_imports_no_heavy_modules(
        "histobag_noncommercial.musk_specs", "torch", "timm", "transformers"
    )


# -- text ---------------------------------------------------------------------------------------

CORPUS = [
    "histopathology image of lung adenocarcinoma",
    "benign lung tissue with alveoli",
    "lung squamous cell carcinoma with keratin pearls",
    "a photomicrograph of colon mucosa with glands",
    "tumour cells with large nuclei and mitoses",
    "stroma, lymphocytes and necrosis in a high grade tumour",
]
PROMPTS = [
    "histopathology image of lung adenocarcinoma",
    "benign lung tissue",
    "xylophone quiz 42 \u00e9\u00e9",  # letters and digits outside the trained alphabet
    " ".join(CORPUS * 6),  # longer than 98 pieces: cut
]


class RefXLMRobertaTokenizer:
    """transformers 4's SentencePiece ``XLMRobertaTokenizer(vocab_file)`` on plain text:
    fairseq's four specials first, SentencePiece ids shifted by ``fairseq_offset`` = 1."""

    def __init__(self, path: Path) -> None:
        import sentencepiece

        self.sp_model = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.fairseq_tokens_to_ids = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
        self.bos_token_id, self.pad_token_id, self.eos_token_id = 0, 1, 2

    def _convert_token_to_id(self, token: str) -> int:
        if token in self.fairseq_tokens_to_ids:
            return self.fairseq_tokens_to_ids[token]
        spm_id = self.sp_model.PieceToId(token)
        return spm_id + 1 if spm_id else 3

    def encode(self, text: str) -> list[int]:
        pieces = self.sp_model.encode(text, out_type=str)
        ids = [self._convert_token_to_id(p) for p in pieces]
        return [0, *ids, 2]


def ref_xlm_tokenizer(text: str, tokenizer: RefXLMRobertaTokenizer, max_len: int = 100) -> Any:
    """``musk.utils.xlm_tokenizer``: strip the ends, cut, add them back, pad, mask the padding."""
    tokens = tokenizer.encode(text)[1:-1][: max_len - 2]
    tokens = [tokenizer.bos_token_id, *tokens, tokenizer.eos_token_id]
    padding = [0] * len(tokens) + [1] * (max_len - len(tokens))
    return tokens + [tokenizer.pad_token_id] * (max_len - len(tokens)), padding


def train_tokenizer(path: Path) -> Path:
    """A SentencePiece unigram model of 60 pieces, written where the official code keeps it."""
    import sentencepiece

    prefix = path.with_suffix("")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_prefix=str(prefix),
        vocab_size=60,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    prefix.with_suffix(".model").rename(path)
    return path


@pytest.fixture(scope="module")
def text_folder(saved: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.safetensors and tokenizer.spm side by side."""
    folder = tmp_path_factory.mktemp("musk-text")
    (folder / "model.safetensors").write_bytes(saved[0].read_bytes())
    train_tokenizer(folder / "tokenizer.spm")
    return folder


def official_text(reference: RefMUSK, spm: Path, texts: list[str]) -> torch.Tensor:
    tokenizer = RefXLMRobertaTokenizer(spm)
    rows = [ref_xlm_tokenizer(text, tokenizer, max_len=100) for text in texts]
    ids = torch.cat([torch.tensor(r[0]).unsqueeze(0) for r in rows])
    padding = torch.cat([torch.tensor(r[1]).unsqueeze(0) for r in rows])
    with torch.inference_mode():
        return reference.text(ids, padding)


def test_text_features_match_official(saved: Any, text_folder: Path) -> None:
    """The tokenizer found next to the weights; the embeddings as the official forward."""
    reference = saved[1]
    spm = text_folder / "tokenizer.spm"
    official_ids = ref_xlm_tokenizer(PROMPTS[3], RefXLMRobertaTokenizer(spm))[0]
    assert official_ids[-1] == 2 and 1 not in official_ids  # the long prompt is cut
    assert 3 in ref_xlm_tokenizer(PROMPTS[2], RefXLMRobertaTokenizer(spm))[0]  # <unk>
    with reduced() as name:
        extractor = build_fp32(name, text_folder / "model.safetensors")
    ids, padding = extractor.tokenizer(PROMPTS)
    for row, text in enumerate(PROMPTS):
        expected_ids, expected_padding = ref_xlm_tokenizer(text, RefXLMRobertaTokenizer(spm))
        assert ids[row].tolist() == expected_ids
        assert padding[row].tolist() == [bool(p) for p in expected_padding]
    ours = extractor.text_features(PROMPTS)
    expected = official_text(reference, spm, PROMPTS)
    assert ours.shape == (len(PROMPTS), TEST_WIDTH) and ours.dtype == torch.float32
    assert_parity(ours, expected, min_std=0.02)  # unit vectors of 256: std about 1/16
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(PROMPTS)))
    assert extractor.text_features([]).shape == (0, TEST_WIDTH)
    with pytest.raises(ExtractorArgumentError, match="list of strings"):
        extractor.text_features("benign lung tissue")


def test_text_shares_the_space_of_the_projected_image(saved: Any, text_folder: Path) -> None:
    """Zero-shot: image features with projection=True, normalised, against text features,
    as the official ``logit_scale * image @ text.T`` (same logits up to the scale)."""
    reference = saved[1]
    tiles = histology_tiles(2, 384, seed=4)
    with reduced() as name:
        extractor = build_fp32(
            name, text_folder / "model.safetensors", projection=True, tokenizer=text_folder
        )
    ours = F.normalize(extractor(tiles), dim=-1) @ extractor.text_features(PROMPTS[:2]).T
    with torch.inference_mode():
        image = reference(card_transform(pil=False)(to_float(tiles)), ms_aug=False, with_head=True)
    expected = (
        F.normalize(image, dim=-1)
        @ official_text(reference, text_folder / "tokenizer.spm", PROMPTS[:2]).T
    )
    assert float((ours - expected).abs().max()) <= 1e-5


def test_tokenizer_sources_and_errors(
    saved: Any, text_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from histobag.errors import MissingDependencyError, WeightsError

    with reduced() as name:
        # weights without tokenizer.spm beside them and no official package: say where it is
        bare = build_fp32(name, saved[0])
        with pytest.raises(WeightsError, match="lilab-stanford/MUSK"):
            bare.text_features(["x"])
        # an editable install of the official repository ships musk/models/tokenizer.spm
        package = tmp_path / "site" / "musk"
        (package / "models").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "models" / "tokenizer.spm").write_bytes(
            (text_folder / "tokenizer.spm").read_bytes()
        )
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        installed = build_fp32(name, saved[0])
        assert installed.text_features(["benign lung tissue"]).shape == (1, TEST_WIDTH)
        # a tokenizer with more ids than the text embedding has rows is not MUSK's
        big = train_tokenizer_of_size(tmp_path / "big.spm", 200)
        assert len(musk_tokenizer.load_tokenizer(big)) > TEST_VOCAB
        with pytest.raises(WeightsError, match="not MUSK's tokenizer"):
            build_fp32(name, saved[0], tokenizer=big).text_features(["x"])
        with pytest.raises(WeightsError, match="No MUSK tokenizer file"):
            build_fp32(name, saved[0], tokenizer=tmp_path / "nowhere").text_features(["x"])
        with pytest.raises(ExtractorArgumentError, match="tokenizer"):
            build_fp32(name, saved[0], tokenizer=3)
        monkeypatch.setitem(sys.modules, "sentencepiece", None)
        with pytest.raises(
            MissingDependencyError, match=r"histobag-noncommercial\[text\]"
        ) as caught:
            build_fp32(name, text_folder / "model.safetensors").text_features(["x"])
        assert caught.value.extra == "text"


def test_text_extra_installs_sentencepiece() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    pyproject = Path(__file__).resolve().parents[2] / "plugins" / "noncommercial" / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    assert any(r.startswith("sentencepiece") for r in project["optional-dependencies"]["text"])
    assert not any(r.startswith("sentencepiece") for r in project["dependencies"])


def train_tokenizer_of_size(path: Path, size: int) -> Path:
    import sentencepiece

    words = " ".join(f"w{i}{chr(97 + i % 26)}" for i in range(400))
    prefix = path.with_suffix("")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([words] * 5 + CORPUS),
        model_prefix=str(prefix),
        vocab_size=size,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    prefix.with_suffix(".model").rename(path)
    return path
