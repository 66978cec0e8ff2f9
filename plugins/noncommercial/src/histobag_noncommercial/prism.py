"""PRISM (Paige): a Perceiver over a slide's Virchow tile features, and its BioGPT text side.

The slide encoder of PRISM (Shaikovski et al. 2024; ``paige-ai/Prism``) turns the 2560-d
Virchow (v1) embeddings of a slide's tiles (class token ‖ mean patch token, 224 px tiles at
20x: histobag's ``virchow``) into one 1280-d slide embedding, the official
``slide_representations(...)['image_embedding']``:

1. 513 learned latents (one for the slide embedding, 512 for the report decoder);
2. 8 Perceiver layers, each a cross-attention from the latents to the tile features (one head
   of width 1280, pre-LN on the latents only, no biases), a GEGLU feed-forward, then a
   6-block latent transformer (8 heads, no biases, GEGLU feed-forwards), all pre-LN residual;
   the weights are shared: layers 1 to 7 use one cross-attention block (layer 0 has its own)
   and all 8 layers use layer 0's transformer;
3. the first latent, layer-normed (``cls_norm``), is the slide embedding.

Coordinates are not used: the Perceiver attends to the set of tile features.

Zero-shot (:class:`PrismExtractor`): the official ``zero_shot`` embeds each prompt with the
unimodal half of its BioGPT decoder (the 12 layers before the first cross-attention layer,
plain BioGPT decoder layers): the prompt's tokens (``</s>`` + text, the ``</s>`` appended to
the text dropped with the batch's last column) then an unused vocabulary token as class token,
whose hidden state after layer 12 is projected (``text_to_latents``) and normalised; slides are
projected by ``img_to_latents``; logits are scaled by ``exp(temperature)``. Report generation
(the cross-attending half of the decoder) is not provided.

Checkpoint: ``model.safetensors`` of the gated repository, the flat state dict of the official
``Prism`` module. Its shared Perceiver blocks appear there under one or more of their layer
names (a safetensors writer keeps one name per shared tensor): every copy present must be
equal, and any one of them loads the block. The report decoder's cross-attending layers,
final norm and output projection are not loaded.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from histobag import ExtractorSpec
from histobag.errors import (
    CheckpointMismatchError,
    ExtractorArgumentError,
    MissingDependencyError,
    WeightsError,
)
from histobag.extractors.base import ModelBuild
from histobag.slide_encoding.extractor import SlideEncoderExtractor
from histobag_noncommercial.text_options import text_options

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: Prefix of the slide encoder's weights in the official checkpoint.
RESAMPLER = "image_resampler."
#: Prefix of the BioGPT decoder's weights in the official checkpoint.
BIOGPT = "text_decoder.model.biogpt."
#: Where the official code's BioGPT tokenizer comes from: the repository and the revision it
#: pins.
TOKENIZER_REPO = "microsoft/biogpt"
TOKENIZER_REVISION = "eb0d815e95434dc9e3b78f464e52b899bee7d923"
_TEXT_BATCH = 64


@dataclass(frozen=True)
class PerceiverConfig:
    """The Perceiver (defaults: the published ``perceiver_config``)."""

    latent_seq: int = 512
    latent_dim: int = 1280
    context_dim: int = 2560
    mhsa_heads: int = 8
    perceiver_depth: int = 8
    transformer_depth: int = 6
    share_xattn_start_layer: int = 1
    share_tf_start_layer: int = 0
    xattn_heads: int = 1
    mlp_mult: int = 1

    def xattn_block(self, layer: int) -> int:
        """The layer whose cross-attention block ``layer`` uses."""
        return min(layer, self.share_xattn_start_layer)

    def tf_block(self, layer: int) -> int:
        """The layer whose latent transformer ``layer`` uses."""
        return min(layer, self.share_tf_start_layer)


@dataclass(frozen=True)
class TextConfig:
    """The BioGPT decoder (defaults: the published ``biogpt_config``) and the joint space."""

    vocab_size: int = 42384
    hidden_size: int = 1024
    num_heads: int = 16
    intermediate_size: int = 4096
    max_positions: int = 1024
    decoder_layers: int = 24
    pad_token_id: int = 1
    #: The unused vocabulary entry ("madeupword0006") the official code appends as class token.
    cls_token_id: int = 42383
    dim_latents: int = 5120

    @property
    def unimodal_layers(self) -> int:
        """Decoder layers before the first cross-attention layer: the text encoder."""
        return self.decoder_layers // 2


#: The published model.
FULL = PerceiverConfig()
FULL_TEXT = TextConfig()


# ------------------------------------------------------------------------------------------
# Perceiver
# ------------------------------------------------------------------------------------------


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H * d) → (B, H, N, d)."""
    b, n, width = x.shape
    return x.view(b, n, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) → (B, N, H * d)."""
    b, heads, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, heads * d)


class GatedGelu(nn.Module):
    """``a * gelu(b)`` of the two halves ``[a, b]`` of the last axis (GEGLU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Half the width of ``x``."""
        value, gate = x.chunk(2, dim=-1)
        return value * F.gelu(gate)


class GegluMlp(nn.Module):
    """Pre-LN feed-forward: ``norm``, then ``net`` = linear to 2 x hidden, GEGLU, linear."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(
            nn.Linear(dim, 2 * dim * mult), GatedGelu(), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch (add ``x`` to it)."""
        return self.net(self.norm(x))


class LatentCrossAttention(nn.Module):
    """Latents (queries, layer-normed) attend to the tile features (not normed); no biases."""

    def __init__(self, query_dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.x_norm = nn.LayerNorm(query_dim)
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * query_dim, bias=False)
        self.to_out = nn.Linear(query_dim, query_dim, bias=False)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, H, N, d) of the tile features (B, N, context_dim)."""
        keys, values = self.to_kv(context).chunk(2, dim=-1)
        return split_heads(keys, self.heads), split_heads(values, self.heads)

    def forward(
        self, latents: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """The residual branch for ``latents`` (B, L, query_dim)."""
        queries = split_heads(self.to_q(self.x_norm(latents)), self.heads)
        return self.to_out(merge_heads(F.scaled_dot_product_attention(queries, keys, values)))


class PackedSelfAttention(nn.Module):
    """Multi-head self-attention with one packed input projection and no biases (the
    parameters of ``nn.MultiheadAttention(bias=False)``: ``in_proj_weight``, ``out_proj``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention output (B, L, dim)."""
        q, k, v = (
            split_heads(t, self.heads) for t in F.linear(x, self.in_proj_weight).chunk(3, -1)
        )
        return self.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class LatentSelfAttention(nn.Module):
    """Pre-LN self-attention among the latents (``norm``, ``mha``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mha = PackedSelfAttention(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch."""
        return self.mha(self.norm(x))


def cross_block(config: PerceiverConfig) -> nn.ModuleDict:
    """A cross-attention block: ``xattn`` then ``ff``."""
    dim = config.latent_dim
    return nn.ModuleDict(
        {
            "xattn": LatentCrossAttention(dim, config.context_dim, config.xattn_heads),
            "ff": GegluMlp(dim, config.mlp_mult),
        }
    )


def latent_transformer(config: PerceiverConfig) -> nn.ModuleList:
    """``transformer_depth`` blocks of ``mhsa`` then ``ff``."""
    dim = config.latent_dim
    return nn.ModuleList(
        nn.ModuleDict(
            {
                "mhsa": LatentSelfAttention(dim, config.mhsa_heads),
                "ff": GegluMlp(dim, config.mlp_mult),
            }
        )
        for _ in range(config.transformer_depth)
    )


class Perceiver(nn.Module):
    """Latents and layers; a shared block is the same module object under each layer that
    uses it (so the state dict names it under each, as the official module does)."""

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        if config.latent_dim % config.xattn_heads or config.latent_dim % config.mhsa_heads:
            raise ValueError("latent_dim must be divisible by the numbers of heads")
        self.config = config
        self.latents = nn.Parameter(torch.randn(config.latent_seq + 1, config.latent_dim))
        layers: list[nn.ModuleDict] = []
        for i in range(config.perceiver_depth):
            xattn = i, config.xattn_block(i)
            tf = i, config.tf_block(i)
            layers.append(
                nn.ModuleDict(
                    {
                        "xattn": cross_block(config)
                        if xattn[0] == xattn[1]
                        else layers[xattn[1]]["xattn"],
                        "tf": latent_transformer(config) if tf[0] == tf[1] else layers[tf[1]]["tf"],
                    }
                )
            )
        self.layers = nn.ModuleList(layers)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """The processed latents (B, 1 + latent_seq, latent_dim) of tile features (B, N, C).

        Each distinct cross-attention block projects the tile features to keys and values
        once; the layers sharing it reuse them (as the official key-value cache does).
        """
        x = self.latents.unsqueeze(0).expand(context.shape[0], -1, -1).to(context.dtype)
        cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, layer in enumerate(self.layers):
            block = layer["xattn"]
            owner = self.config.xattn_block(i)
            if owner not in cache:
                cache[owner] = block["xattn"].keys_values(context)
            x = x + block["xattn"](x, *cache[owner])
            x = x + block["ff"](x)
            for sub in layer["tf"]:
                x = x + sub["mhsa"](x)
                x = x + sub["ff"](x)
        return x


class ImageResampler(nn.Module):
    """The official ``PerceiverResampler``: the Perceiver and the norms of its outputs."""

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        self.cls_norm = nn.LayerNorm(config.latent_dim)
        self.img_norm = nn.LayerNorm(config.latent_dim)  # of the 512 report latents
        self.perceiver = Perceiver(config)

    def forward(self, tile_features: torch.Tensor) -> torch.Tensor:
        """The slide embedding (B, latent_dim): the first latent, normed."""
        return self.cls_norm(self.perceiver(tile_features)[:, 0])


# ------------------------------------------------------------------------------------------
# BioGPT's unimodal half (the text encoder of zero-shot)
# ------------------------------------------------------------------------------------------


class TextSelfAttention(nn.Module):
    """BioGPT's causal self-attention (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(dim, dim) for _ in range(4)
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Attention output; ``allowed`` (B, 1, L, L) bool says which keys a query sees."""
        q, k, v = (split_heads(p(x), self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(
            merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
        )


class TextLayer(nn.Module):
    """A BioGPT decoder layer without cross-attention: pre-LN attention, pre-LN GELU MLP."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.self_attn = TextSelfAttention(dim, config.num_heads)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """The layer's output."""
        x = x + self.self_attn(self.self_attn_layer_norm(x), allowed)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class TextEncoder(nn.Module):
    """Token and position embeddings and the unimodal decoder layers of PRISM's BioGPT."""

    #: BioGPT's learned positions start at row 2.
    POSITION_OFFSET = 2

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(
            config.max_positions + self.POSITION_OFFSET, config.hidden_size
        )
        self.layers = nn.ModuleList(TextLayer(config) for _ in range(config.unimodal_layers))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, hidden) after the unimodal layers (no final norm).

        Padding tokens are not attended to; positions count the tokens that are not padding
        (a padding token sits at position -1), as BioGPT's learned positions do.
        """
        keep = input_ids != self.config.pad_token_id
        counts = keep.long().cumsum(dim=1)
        positions = counts * keep.long() - 1 + self.POSITION_OFFSET
        scale = math.sqrt(self.config.hidden_size)
        x = self.embed_tokens(input_ids) * scale + self.embed_positions(positions)
        length = input_ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        allowed = (causal[None] & keep[:, None, :])[:, None]
        for layer in self.layers:
            x = layer(x, allowed)
        return x


class LatentProjection(nn.Module):
    """The official ``EmbedToLatents``: a linear map without bias, then L2 normalisation."""

    def __init__(self, dim: int, dim_latents: int) -> None:
        super().__init__()
        self.to_latents = nn.Linear(dim, dim_latents, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unit vectors (..., dim_latents)."""
        return F.normalize(self.to_latents(x), dim=-1)


# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------


class Prism(nn.Module):
    """PRISM's slide encoder under the official names, with the zero-shot heads when ``text``.

    Called as the core calls a slide encoder: ``model(features (1, N, 2560), coords,
    extent_px) -> (1, 1280)`` (coordinates are not used).
    """

    def __init__(
        self, config: PerceiverConfig = FULL, text_config: TextConfig | None = FULL_TEXT
    ) -> None:
        super().__init__()
        self.config = config
        self.text_config = text_config
        self.image_resampler = ImageResampler(config)
        if text_config is not None:
            # The official module names: text_decoder.model.biogpt.* inside Prism.
            self.text_decoder = nn.Module()
            self.text_decoder.model = nn.Module()
            self.text_decoder.model.biogpt = TextEncoder(text_config)
            self.img_to_latents = LatentProjection(config.latent_dim, text_config.dim_latents)
            self.text_to_latents = LatentProjection(
                text_config.hidden_size, text_config.dim_latents
            )
            self.temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(
        self,
        features: torch.Tensor,
        coords: torch.Tensor | None = None,
        extent_px: int | None = None,
    ) -> torch.Tensor:
        """Slide embeddings (B, 1280) of tile features (B, N, 2560)."""
        return self.image_resampler(features)

    @property
    def text_encoder(self) -> TextEncoder:
        """The unimodal half of the BioGPT decoder."""
        if self.text_config is None:
            raise ExtractorArgumentError(
                "This PRISM was built without its text side (text=False): build it with "
                "text=True for zero-shot."
            )
        return self.text_decoder.model.biogpt

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Normalised text embeddings (B, dim_latents) of prompt tokens to which the class
        token has been appended (the embedding is its hidden state)."""
        return self.text_to_latents(self.text_encoder(input_ids)[:, -1])


# ------------------------------------------------------------------------------------------
# Checkpoint
# ------------------------------------------------------------------------------------------


def shared_groups(config: PerceiverConfig) -> list[list[str]]:
    """The official name prefixes of each shared Perceiver block, the owner's first."""
    layers = f"{RESAMPLER}perceiver.layers."
    depth = config.perceiver_depth
    groups = []
    for part, owner_of in (("xattn", config.xattn_block), ("tf", config.tf_block)):
        for owner in sorted({owner_of(i) for i in range(depth)}):
            users = [i for i in range(depth) if owner_of(i) == owner]
            if len(users) > 1:
                groups.append([f"{layers}{i}.{part}." for i in users])
    return groups


def unused_prefixes(text_config: TextConfig | None) -> list[str]:
    """Official checkpoint entries this model does not load: the report decoder's
    cross-attending half, final norm and output projection; without the text side, all of
    the text decoder and the joint-space heads."""
    if text_config is None:
        return ["text_decoder.", "img_to_latents.", "text_to_latents.", "temperature"]
    cross = range(text_config.unimodal_layers, text_config.decoder_layers)
    return [f"{BIOGPT}layers.{i}." for i in cross] + [
        f"{BIOGPT}layer_norm.",
        "text_decoder.model.output_projection.",
    ]


def checkpoint_adapter(model: Prism) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The official flat state dict → ``model``'s: unused entries dropped, every name of a
    shared block filled from whichever of its names the file has (all of them equal)."""
    own = list(model.state_dict())
    groups = shared_groups(model.config)
    dropped = unused_prefixes(model.text_config)

    def adapt(state_dict: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in state_dict.items() if not k.startswith(tuple(dropped))}
        for prefixes in groups:
            suffixes = [k[len(prefixes[0]) :] for k in own if k.startswith(prefixes[0])]
            for suffix in suffixes:
                names = [p + suffix for p in prefixes]
                present = [n for n in names if n in out]
                if not present:
                    continue  # reported as missing by the strict load
                first = out[present[0]]
                for name in present[1:]:
                    if not torch.equal(out[name], first):
                        raise CheckpointMismatchError(
                            f"{name} and {present[0]} are one shared block of PRISM's "
                            "Perceiver but differ in the checkpoint: it is not a PRISM "
                            "checkpoint (or it was edited)."
                        )
                out.update(dict.fromkeys(names, first))
        return out

    return adapt


def prism_build(
    config: PerceiverConfig = FULL,
    text_config: TextConfig = FULL_TEXT,
    *,
    text: bool = True,
    tokenizer: str | os.PathLike[str] | None = None,
) -> ModelBuild:
    """ModelBuild of a PRISM of architecture ``config`` (random weights until loaded)."""
    options = text_options(text, tokenizer)
    model = Prism(config, text_config if text else None).eval()
    return ModelBuild(
        module=model,
        adapt_state_dict=checkpoint_adapter(model),
        num_features=config.latent_dim,
        extractor_cls=PrismExtractor,
        extra={
            "in_features": config.context_dim,
            **options,
        },
    )


def build_prism(
    spec: ExtractorSpec, *, text: bool = True, tokenizer: str | os.PathLike[str] | None = None
) -> ModelBuild:
    """Factory of ``prism``: the published architecture.

    Args:
        spec: The extractor spec.
        text: Also load the zero-shot text side (the unimodal half of the BioGPT decoder and
            the joint-space heads, about 200M parameters); ``False`` keeps only the slide
            encoder (about 100M).
        tokenizer: Folder or Hugging Face repository of BioGPT's tokenizer (``vocab.json``,
            ``merges.txt``) for :meth:`PrismExtractor.text_features`; default
            ``microsoft/biogpt`` at the revision the official code pins.
    """
    return prism_build(FULL, FULL_TEXT, text=text, tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------
# Extractor
# ------------------------------------------------------------------------------------------


class PrismExtractor(SlideEncoderExtractor):
    """PRISM's slide encoder, with the zero-shot text side of the official model."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokenizer: PreTrainedTokenizerBase | None = None

    @property
    def prism(self) -> Prism:
        """The network."""
        return self.model  # type: ignore[return-value]

    def text_side(self) -> Prism:
        """The network, if it was built with its text side (else ExtractorArgumentError)."""
        _ = self.prism.text_encoder  # raises for text=False
        return self.prism

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """BioGPT's tokenizer, loaded on first use (see :func:`load_tokenizer`)."""
        if self._tokenizer is None:
            source = self.extra.get("tokenizer")
            tokenizer = load_tokenizer(source, model=self.tag)
            vocab = self.prism.text_encoder.config.vocab_size
            if len(tokenizer) > vocab:
                raise WeightsError(
                    f"The tokenizer {source or TOKENIZER_REPO!r} has {len(tokenizer)} tokens "
                    f"but {self.tag!r} embeds {vocab}: it is not BioGPT's tokenizer."
                )
            self._tokenizer = tokenizer
        return self._tokenizer

    def prompt_tokens(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids (P, L) as the official ``zero_shot`` makes them from its prompts: each
        text + ``</s>``, tokenized with ``</s>`` in front, padded to the longest, the last
        column dropped, the class token appended.

        The official code tokenizes all prompts of one call together, so the longest prompt
        loses its closing ``</s>`` and the others keep theirs; the same prompts give the same
        ids here when passed together.
        """
        tokenizer = self.tokenizer
        encoded = tokenizer(
            [p + tokenizer.eos_token for p in prompts],
            add_special_tokens=True,
            padding=True,
            return_tensors="pt",
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"][:, :-1]
        cls = torch.full((len(prompts), 1), self.prism.text_encoder.config.cls_token_id)
        return torch.cat([encoded, cls], dim=1)

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings in the joint space, L2-normalised, float32 (P, 5120) on the model's
        device (see :meth:`prompt_tokens` for how prompts are tokenized together)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ExtractorArgumentError("text_features expects a list of strings")
        width = self.prism.text_encoder.config.dim_latents  # refuses a model without text
        if not prompts:
            return torch.zeros(0, width, device=self.device)
        ids = self.prompt_tokens(prompts).to(self.device)
        outputs = []
        with torch.inference_mode(), self.autocast():
            for start in range(0, len(ids), _TEXT_BATCH):
                outputs.append(self.prism.encode_text(ids[start : start + _TEXT_BATCH]).float())
        return F.normalize(torch.cat(outputs), dim=-1)

    def slide_to_text_space(self, slide_embeddings: Any) -> torch.Tensor:
        """Slide embeddings (S, 1280) projected into the joint space (``img_to_latents``),
        L2-normalised, float32 (S, 5120) on the model's device."""
        emb = torch.as_tensor(slide_embeddings, dtype=torch.float32).to(self.device)
        if emb.ndim == 1:
            emb = emb[None]
        if emb.ndim != 2 or emb.shape[1] != self.num_features:
            raise ExtractorArgumentError(
                f"slide embeddings must be (S, {self.num_features}), got {tuple(emb.shape)}"
            )
        with torch.inference_mode(), self.autocast():
            projected = self.text_side().img_to_latents(emb).float()
        return F.normalize(projected, dim=-1)

    @property
    def logit_scale(self) -> float:
        """The official multiplier of the similarities: ``exp(temperature)``."""
        return float(self.text_side().temperature.detach().float().exp())

    def class_probabilities(
        self, slide_embeddings: Any, class_prompts: Sequence[Sequence[str]]
    ) -> torch.Tensor:
        """The official zero-shot rule: one softmax over all prompts of all classes, each
        class's probability the sum over its prompts (the official ``zero_shot`` with a
        negative and a positive prompt list is ``class_prompts=[neg, pos]``).

        Returns:
            float32 (S, number of classes) on the model's device.
        """
        prompts = [p for group in class_prompts for p in group]
        if not prompts or any(not group for group in class_prompts):
            raise ExtractorArgumentError("each class needs at least one prompt")
        sim = self.slide_to_text_space(slide_embeddings) @ self.text_features(prompts).T
        probs = (sim * self.logit_scale).softmax(dim=-1)
        bounds = torch.tensor([0, *(len(g) for g in class_prompts)]).cumsum(0).tolist()
        return torch.stack(
            [probs[:, a:b].sum(dim=-1) for a, b in itertools.pairwise(bounds)], dim=-1
        )


def load_tokenizer(source: str | None, *, model: str = "prism") -> PreTrainedTokenizerBase:
    """BioGPT's tokenizer from a folder or Hugging Face repository (default: the official
    code's ``microsoft/biogpt`` revision).

    Raises:
        MissingDependencyError: ``transformers`` or ``sacremoses`` (which BioGPT's tokenizer
            needs) is not installed.
        WeightsError: The tokenizer files could not be found or downloaded.
    """
    try:
        import sacremoses  # noqa: F401 - BioGptTokenizer needs it
        from transformers import BioGptTokenizer
    except ImportError as exc:
        raise MissingDependencyError(
            f"Text features of {model!r} need BioGPT's tokenizer, from the transformers and "
            'sacremoses packages: pip install "histobag-noncommercial[text]" sacremoses',
            module=exc.name or "transformers",
            extra="text",
        ) from exc
    revision = TOKENIZER_REVISION if source is None else None
    try:
        return BioGptTokenizer.from_pretrained(source or TOKENIZER_REPO, revision=revision)
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"Could not load BioGPT's tokenizer from {source or TOKENIZER_REPO!r} ({exc}). It "
            "needs vocab.json and merges.txt, as in https://huggingface.co/microsoft/biogpt; "
            f"pass their folder with build_feature_extractor({model!r}, tokenizer=...)."
        ) from exc
