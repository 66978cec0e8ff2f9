"""PRISM (paige-ai/Prism): the Perceiver slide encoder and the zero-shot text side.

The reference below restates the official modeling code (``perceiver.py``, ``biogpt.py``,
``modeling_prism.py`` of the Hugging Face repository): the Perceiver with its shared blocks
(the same module objects under several layers, a key-value cache across the layers sharing a
cross-attention block, ``nn.MultiheadAttention`` for the latent self-attention, the default
tile mask of float ones added to the cross-attention scores), and for the text side the stock
``transformers`` BioGPT decoder layers with the official positions (``cumsum(mask) * mask -
1``) and the last-token read-out after the unimodal layers. Random weights in the official
flat layout (every tensor perturbed) are saved as ``model.safetensors`` and loaded through
``histobag.build_feature_extractor``; the slide embedding is compared on a generated bag of
over 2,000 tiles. Full-size key names and shapes are compared on the meta device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import histobag
from histobag.errors import CheckpointMismatchError, ExtractorArgumentError
from histobag_noncommercial import prism as pm
from histobag_noncommercial import prism_specs
from tests.core.toy_models import registered as registered_specs
from tests.parity import assert_imports_no_heavy_modules, perturbed
from tests.slide_bags import generated_bag

# Reduced sizes: every structural feature of the published configuration is kept (8 layers,
# sharing from layers 1 and 0, one cross-attention head, GEGLU, a 2:1 decoder split).
SMALL = pm.PerceiverConfig(
    latent_seq=12, latent_dim=32, context_dim=40, mhsa_heads=4, transformer_depth=2
)
SMALL_TEXT = pm.TextConfig(
    vocab_size=90,
    hidden_size=24,
    num_heads=4,
    intermediate_size=48,
    max_positions=40,
    decoder_layers=4,
    cls_token_id=89,
    dim_latents=20,
)
N_TILES = 2000
EXTENT = 224  # Virchow tiles: 224 px at 20x, level 0 of a 20x slide


# ------------------------------------------------------------------------------------------
# Reference: the official architecture, restated
# ------------------------------------------------------------------------------------------


class RefGeglu(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=-1)
        return a * F.gelu(b)


class RefFeedForward(nn.Module):
    def __init__(self, dim, mult):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(
            nn.Linear(dim, dim * mult * 2), RefGeglu(), nn.Linear(dim * mult, dim), nn.Dropout(0.0)
        )

    def forward(self, x):
        return self.net(self.norm(x))


class RefCrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim, heads):
        super().__init__()
        self.heads, self.head_dim = heads, query_dim // heads
        self.x_norm = nn.LayerNorm(query_dim)
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_kv = nn.Linear(context_dim, query_dim * 2, bias=False)
        self.to_out = nn.Linear(query_dim, query_dim, bias=False)

    def forward(self, x, c=None, kvt=None, attn_mask=None):
        b, nx, _ = x.shape
        q = self.to_q(self.x_norm(x)).reshape(b, nx, self.heads, self.head_dim)
        if kvt is None:
            nc = c.shape[1]
            k, v = self.to_kv(c).reshape(b, nc, 2, self.heads, self.head_dim).unbind(2)
            kvt = (k, v)
        k, v = kvt
        mask = attn_mask.reshape(b, 1, nx, -1).expand(-1, self.heads, -1, -1)
        a = F.scaled_dot_product_attention(
            q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3), attn_mask=mask
        )
        return self.to_out(a.transpose(1, 2).reshape(b, nx, -1)), kvt


class RefMHSA(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mha = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)

    def forward(self, x):
        x = self.norm(x)
        return self.mha(x, x, x, need_weights=False)[0]


class RefPerceiver(nn.Module):
    def __init__(self, cfg: pm.PerceiverConfig):
        super().__init__()
        self.cfg = cfg
        self.latents = nn.Parameter(torch.randn(cfg.latent_seq + 1, cfg.latent_dim))
        dim = cfg.latent_dim

        def xattn():
            return nn.ModuleDict(
                {
                    "xattn": RefCrossAttention(dim, cfg.context_dim, cfg.xattn_heads),
                    "ff": RefFeedForward(dim, cfg.mlp_mult),
                }
            )

        def transformer():
            return nn.ModuleList(
                nn.ModuleDict(
                    {"mhsa": RefMHSA(dim, cfg.mhsa_heads), "ff": RefFeedForward(dim, cfg.mlp_mult)}
                )
                for _ in range(cfg.transformer_depth)
            )

        layers = []
        for i in range(cfg.perceiver_depth):
            layers.append(
                nn.ModuleDict(
                    {
                        "xattn": xattn()
                        if i <= cfg.share_xattn_start_layer
                        else layers[-1]["xattn"],
                        "tf": transformer() if i <= cfg.share_tf_start_layer else layers[-1]["tf"],
                    }
                )
            )
        self.layers = nn.ModuleList(layers)

    def forward(self, context, attn_mask):
        b, n, _ = context.shape
        mask = attn_mask.reshape(b, 1, n).expand(-1, self.cfg.latent_seq + 1, -1)
        x = self.latents.unsqueeze(0).expand(b, -1, -1)
        kvt = None
        for i, layer in enumerate(self.layers):
            block = layer["xattn"]
            if i <= self.cfg.share_xattn_start_layer:
                out, kvt = block["xattn"](x, c=context, attn_mask=mask)
            else:
                out, kvt = block["xattn"](x, kvt=kvt, attn_mask=mask)
            x = out + x
            x = block["ff"](x) + x
            for sub in layer["tf"]:
                x = sub["mhsa"](x) + x
                x = sub["ff"](x) + x
        return x


class RefResampler(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cls_norm = nn.LayerNorm(cfg.latent_dim)
        self.img_norm = nn.LayerNorm(cfg.latent_dim)
        self.perceiver = RefPerceiver(cfg)

    def forward(self, tiles):
        mask = torch.ones(tiles.shape[:2], dtype=tiles.dtype)  # the official default mask
        x = self.perceiver(tiles, mask)
        return {"image_embedding": self.cls_norm(x[:, 0]), "image_latents": self.img_norm(x[:, 1:])}


class RefCrossAttentionExtras(nn.Module):
    """What the official decoder adds to layers from ``num_hidden_layers // 2`` on."""

    def __init__(self, hidden, context):
        super().__init__()
        self.x_attn_layer_norm = nn.LayerNorm(hidden)
        self.x_attn = nn.Module()
        for name, fan_in in (("k_proj", context), ("v_proj", context)):
            setattr(self.x_attn, name, nn.Linear(fan_in, hidden))
        self.x_attn.q_proj = nn.Linear(hidden, hidden)
        self.x_attn.out_proj = nn.Linear(hidden, hidden)


def biogpt_config(text: pm.TextConfig, layers: int):
    from transformers import BioGptConfig

    config = BioGptConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=text.num_heads,
        intermediate_size=text.intermediate_size,
        max_position_embeddings=text.max_positions,
        hidden_act="gelu",
        scale_embedding=True,
        pad_token_id=text.pad_token_id,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    return config


class RefPrism(nn.Module):
    """The official ``Prism`` module's layout and the read-outs the tests compare."""

    def __init__(self, cfg: pm.PerceiverConfig, text: pm.TextConfig):
        from transformers import BioGptForCausalLM

        super().__init__()
        self.text = text
        self.image_resampler = RefResampler(cfg)
        self.text_decoder = nn.Module()
        self.text_decoder.model = BioGptForCausalLM(biogpt_config(text, text.decoder_layers))
        for i in range(text.unimodal_layers, text.decoder_layers):
            extras = RefCrossAttentionExtras(text.hidden_size, cfg.latent_dim)
            layer = self.text_decoder.model.biogpt.layers[i]
            layer.x_attn_layer_norm, layer.x_attn = extras.x_attn_layer_norm, extras.x_attn
        self.img_to_latents = nn.Module()
        self.img_to_latents.to_latents = nn.Linear(cfg.latent_dim, text.dim_latents, bias=False)
        self.text_to_latents = nn.Module()
        self.text_to_latents.to_latents = nn.Linear(text.hidden_size, text.dim_latents, bias=False)
        self.temperature = nn.Parameter(torch.log(torch.tensor(1.0) / 0.07))

    def slide_representations(self, tiles):
        return self.image_resampler(tiles)

    def text_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """The official BioGPT.forward read-out: the class token appended, the hidden state
        after the last unimodal layer at that token (stock transformers layers)."""
        from transformers import BioGptModel

        text = self.text
        unimodal = BioGptModel(biogpt_config(text, text.unimodal_layers)).eval()
        own = self.text_decoder.model.biogpt.state_dict()
        missing, _ = unimodal.load_state_dict(own, strict=False)
        assert not missing
        ids = torch.cat([ids, torch.full((len(ids), 1), text.cls_token_id)], dim=1)
        mask = (ids != text.pad_token_id).long()
        positions = torch.cumsum(mask, dim=1) * mask - 1
        captured = {}
        unimodal.layers[-1].register_forward_hook(lambda m, i, o: captured.update(h=o))
        unimodal(input_ids=ids, attention_mask=mask, position_ids=positions)
        out = captured["h"]
        return (out[0] if isinstance(out, tuple) else out)[:, -1]

    def project_text(self, emb):
        return F.normalize(self.text_to_latents.to_latents(emb), dim=-1)

    def project_image(self, emb):
        return F.normalize(self.img_to_latents.to_latents(emb), dim=-1)


def reference(seed: int = 0) -> RefPrism:
    torch.manual_seed(seed)
    return perturbed(RefPrism(SMALL, SMALL_TEXT), seed=seed, scale=0.3)


def official_state_dict(ref: nn.Module, layout: str) -> dict[str, torch.Tensor]:
    """The flat state dict: ``"all"`` names every shared tensor under each of its layers (as
    ``state_dict()`` and ``torch.save`` do, cloned for safetensors), ``"first"`` / ``"last"``
    keep one name per shared tensor (as a deduplicating safetensors writer does)."""
    groups: dict[int, list[str]] = {}
    tensors = ref.state_dict(keep_vars=True)
    for name, tensor in tensors.items():
        groups.setdefault(id(tensor), []).append(name)
    out = {}
    for names in groups.values():
        keep = {"all": names, "first": sorted(names)[:1], "last": sorted(names)[-1:]}[layout]
        for name in keep:
            out[name] = tensors[name].detach().clone().contiguous()
    return out


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------


def small_prism(spec, *, text=True, tokenizer=None):
    return pm.prism_build(SMALL, SMALL_TEXT, text=text, tokenizer=tokenizer)


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    spec = prism_specs.prism().replace(
        name="prism-small", aliases=(), factory=small_prism, hf_repo=None, distribution=""
    )
    with registered_specs(spec):
        yield


@pytest.fixture(scope="module")
def ref() -> RefPrism:
    return reference()


@pytest.fixture(scope="module")
def checkpoint(ref, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prism") / "model.safetensors"
    save_file(official_state_dict(ref, "first"), path)
    return path


@pytest.fixture(scope="module")
def bag() -> tuple[np.ndarray, np.ndarray]:
    return generated_bag(N_TILES, SMALL.context_dim, extent_px=EXTENT, seed=3)


def build(weights, **kwargs):
    return histobag.build_feature_extractor(
        "prism-small", weights=weights, device="cpu", mixed_precision=False, **kwargs
    )


def expected_embedding(ref, features) -> torch.Tensor:
    with torch.inference_mode():
        return ref.slide_representations(torch.from_numpy(features)[None])["image_embedding"][0]


# ------------------------------------------------------------------------------------------
# Slide embedding
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["first", "last", "all"])
def test_slide_embedding_matches_reference(ref, bag, layout, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(official_state_dict(ref, layout), path)
    extractor = build(path)
    assert isinstance(extractor, pm.PrismExtractor)
    features, coords = bag
    assert len(features) >= N_TILES
    ours = extractor(features, coords, extent_px=EXTENT)
    expected = expected_embedding(ref, features)
    assert ours.dtype == torch.float32 and ours.shape == (SMALL.latent_dim,)
    assert float(expected.std()) > 0.1
    gap = float((ours - expected).abs().max())
    assert gap <= 1e-5 * float(expected.abs().max()), gap


def test_coordinates_and_tile_order_do_not_matter(checkpoint, bag):
    extractor = build(checkpoint, text=False)
    features, coords = bag
    order = np.random.default_rng(0).permutation(len(features))
    a = extractor(features, coords, extent_px=EXTENT)
    b = extractor(features[order], coords[order] * 2 + 5, extent_px=2 * EXTENT)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_text_false_loads_the_same_slide_encoder(ref, checkpoint, bag):
    features, coords = bag
    slide_only = build(checkpoint, text=False)
    assert not hasattr(slide_only.model, "text_decoder")
    torch.testing.assert_close(
        slide_only(features, coords), build(checkpoint)(features, coords), atol=0, rtol=0
    )
    for use in (
        lambda: slide_only.text_features(["a"]),
        lambda: slide_only.slide_to_text_space(torch.zeros(1, SMALL.latent_dim)),
        lambda: slide_only.logit_scale,
    ):
        with pytest.raises(ExtractorArgumentError, match="text=False"):
            use()


def test_shared_copies_must_agree(ref, tmp_path):
    state = official_state_dict(ref, "all")
    key = next(k for k in state if ".layers.5.xattn.xattn.to_q." in k)
    state[key] = state[key] + 1
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="shared block"):
        build(tmp_path / "model.safetensors")


def test_missing_and_foreign_keys_are_refused(ref, tmp_path):
    state = official_state_dict(ref, "first")
    shared = [k for k in state if ".perceiver.layers.1.xattn.ff.norm.weight" in k]
    assert shared
    del state[shared[0]]
    state["image_resampler.extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as caught:
        build(tmp_path / "model.safetensors")
    message = str(caught.value)
    assert "layers.1.xattn.ff.norm.weight" in message and "image_resampler.extra" in message


def test_wrong_feature_width_is_refused(checkpoint):
    features, coords = generated_bag(10, SMALL.context_dim + 1, extent_px=EXTENT)
    with pytest.raises(ExtractorArgumentError, match="virchow"):
        build(checkpoint, text=False)(features, coords)


# ------------------------------------------------------------------------------------------
# Zero-shot
# ------------------------------------------------------------------------------------------


class WordTokenizer:
    """Stands in for BioGptTokenizer (which needs sacremoses and BioGPT's files): one id per
    word, ``</s>`` (2) in front and for a ``</s>`` in the text, right padding with 1."""

    eos_token = "</s>"

    def __len__(self) -> int:
        return SMALL_TEXT.vocab_size - 1

    def word(self, word: str) -> int:
        return 4 + sum(map(ord, word)) % (SMALL_TEXT.vocab_size - 6)

    def __call__(self, texts, *, add_special_tokens, padding, return_tensors, **_):
        assert add_special_tokens and padding and return_tensors == "pt"
        rows = []
        for text in texts:
            assert text.endswith(self.eos_token)
            rows.append([2, *(self.word(w) for w in text[: -len(self.eos_token)].split()), 2])
        width = max(map(len, rows))
        return {"input_ids": torch.tensor([r + [1] * (width - len(r)) for r in rows])}


PROMPTS = ["invasive ductal carcinoma", "normal tissue", "lobular carcinoma, invasive, grade two"]


@pytest.fixture(scope="module")
def zero_shot_model(checkpoint) -> pm.PrismExtractor:
    extractor = build(checkpoint)
    extractor._tokenizer = WordTokenizer()
    return extractor


def official_tokens(prompts: list[str]) -> torch.Tensor:
    """The official ``zero_shot``: ``tokenize(prompts)[:, :-1]``."""
    tokenizer = WordTokenizer()
    return tokenizer(
        [p + "</s>" for p in prompts], add_special_tokens=True, padding=True, return_tensors="pt"
    )["input_ids"][:, :-1]


def test_text_features_match_reference(ref, zero_shot_model):
    ours = zero_shot_model.text_features(PROMPTS)
    tokens = official_tokens(PROMPTS)
    assert (tokens == 1).any()  # padded: positions and masks are exercised
    with torch.inference_mode():
        expected = ref.project_text(ref.text_embedding(tokens))
    assert ours.shape == (3, SMALL_TEXT.dim_latents)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(3))
    gap = float((ours - expected).abs().max())
    assert gap <= 1e-5, gap
    # Alone, a prompt keeps its closing </s> only if it is not the longest (official quirk).
    alone = zero_shot_model.text_features(PROMPTS[1:2])
    assert not torch.allclose(alone[0], ours[1], atol=1e-4)


def test_joint_space_and_official_zero_shot_rule(ref, zero_shot_model, bag):
    features, coords = bag
    slide = zero_shot_model(features, coords)
    projected = zero_shot_model.slide_to_text_space(slide)
    with torch.inference_mode():
        expected_slide = ref.project_image(expected_embedding(ref, features)[None])
        scale = float(ref.temperature.exp())
        text = ref.project_text(ref.text_embedding(official_tokens(PROMPTS)))
    torch.testing.assert_close(projected, expected_slide, atol=1e-5, rtol=1e-5)
    assert zero_shot_model.logit_scale == pytest.approx(scale, rel=1e-6)
    assert zero_shot_model.logit_scale != pytest.approx(1 / 0.07)  # loaded, not initialised
    # Official zero_shot(neg_prompts=PROMPTS[:1], pos_prompts=PROMPTS[1:]).
    probs = (expected_slide @ text.T * scale).softmax(-1)
    official = torch.stack([probs[:, :1].sum(-1), probs[:, 1:].sum(-1)], dim=-1)
    ours = zero_shot_model.class_probabilities(slide, [PROMPTS[:1], PROMPTS[1:]])
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-5)
    result = histobag.slide_encoding.zero_shot(
        zero_shot_model, slide[None], {"ductal": PROMPTS[:1], "other": PROMPTS[1:]}
    )
    assert result["probabilities"].shape == (1, 2)


def test_tokenizer_needs_sacremoses(checkpoint, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sacremoses(name, *args, **kwargs):
        if name == "sacremoses":
            raise ImportError("no sacremoses", name="sacremoses")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sacremoses)
    with pytest.raises(histobag.errors.MissingDependencyError, match="sacremoses") as caught:
        build(checkpoint).text_features(["a"])
    assert caught.value.extra == "text"


# ------------------------------------------------------------------------------------------
# Full size and the listing
# ------------------------------------------------------------------------------------------


def layout(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_full_size_layout_matches_official():
    with torch.device("meta"):
        ours = pm.Prism()
        official = RefPrism(pm.FULL, pm.FULL_TEXT)
    theirs = layout(official)
    mine = layout(ours)
    assert {k: theirs[k] for k in mine} == mine
    dropped = set(theirs) - set(mine)
    assert dropped and all(k.startswith(tuple(pm.unused_prefixes(pm.FULL_TEXT))) for k in dropped)
    assert {int(k.split(".")[4]) for k in dropped if ".layers." in k} == set(range(12, 24))
    # The model card's 558M parameters (shared blocks counted once).
    assert sum(p.numel() for p in official.parameters()) == pytest.approx(558e6, rel=0.002)
    assert sum(p.numel() for p in ours.image_resampler.parameters()) == pytest.approx(
        99.0e6, rel=0.01
    )
    assert theirs["image_resampler.perceiver.latents"] == (513, 1280)
    assert theirs["image_resampler.perceiver.layers.0.xattn.xattn.to_kv.weight"] == (2560, 2560)


def test_spec_and_required_tile_encoder():
    spec = histobag.extractor_info("prism")
    assert spec.pack == "histobag-noncommercial" and spec.kind == "tile_features"
    assert spec.license == "CC-BY-NC-ND-4.0" and spec.gated
    assert (spec.hf_repo, spec.hf_filename) == ("paige-ai/Prism", "model.safetensors")
    assert spec.num_features == 1280 and "Shaikovski" in spec.citation
    needs = spec.slide_input
    assert (needs.tile_encoders, needs.tile_px, needs.magnification) == (("virchow",), 224, 20.0)
    # histobag's virchow gives what PRISM takes: Virchow v1, class token ‖ mean patch token,
    # 2560-d, from 224 px tiles seen as they are (resize and crop to 224 change nothing).
    virchow = histobag.extractor_info("virchow")
    assert virchow.hf_repo == "paige-ai/Virchow" and virchow.num_features == 2560
    assert virchow.input_size == 224 == needs.tile_px
    assert (virchow.preprocessing.resize, virchow.preprocessing.center_crop) == (224, 224)
    with torch.device("meta"):
        tile_model = virchow.load_factory()(virchow).module
    assert (tile_model.pooling, tile_model.num_prefix_tokens) == ("cls+mean", 1)
    assert tile_model.backbone.num_prefix_tokens == 1  # no register tokens in Virchow v1
    assert pm.FULL.context_dim == 2560 and math.isclose(needs.tile_um, 112.0)


def test_listing_imports_no_torch():
    assert_imports_no_heavy_modules("histobag_noncommercial.prism_specs", "torch", "transformers")
