"""TITAN (Mahmood Lab, Ding et al. 2024): a slide encoder over CONCH v1.5 tile features, and
its text tower.

The vision encoder (the official ``vision_transformer.py`` of the gated ``MahmoodLab/TITAN``
repository, as ``encode_slide_from_patch_features(features, coords, patch_size_lv0)`` runs it,
and as TRIDENT calls it) turns the 768-d CONCH v1.5 features of a slide's 512 px tiles at 20x
into one 768-d slide embedding:

1. The tiles are laid on a 2-D grid: a tile's cell is ``floor((xy - min xy) / extent_px)``,
   ``extent_px`` being the level-0 side of one tile (``patch_size_lv0``: 512 at 20x, 1024 on a
   40x slide). Tiles falling in one cell are summed, and cells whose (summed) features are all
   zero are dropped as background. The cells' features, in row-major order of ``(x cell,
   y cell)``, are the tokens.
2. ``patch_embed`` (Linear + GELU), a class token in front, six pre-LN ViT blocks whose
   attention adds a 2-D ALiBi bias, ``-slope_h * |cell_i - cell_j|`` (Euclidean distance in
   cells; zero to and from the class token; 12 heads, the slopes of the official
   ``get_slopes``), then ``norm``.
3. The slide embedding is the contrastive attentional pool (``attn_pool_contrastive``: one
   learned query over all tokens, the class token included), neither projected nor
   normalised (``no_proj=True``). ``attn_pool`` (128 queries, for the removed report decoder)
   is loaded but not needed for it.

The official code builds the (heads, L, L) bias of all tokens at once; here it is built for a
block of query rows at a time (:class:`AlibiBias`), so a slide of 50,000 tiles does not need a
120 GB bias. Token order does not change the result (the bias follows the tokens and the pool
is order-free); the official order is kept.

Zero-shot (the official ``zero_shot``): ``normalize(slide_embedding @ vision_encoder.proj)``
against class embeddings of the text tower, with no temperature (``logit_scale`` 1). The text
tower (``text_encoder``) is open_clip's CoCa ``TextTransformer`` as CONCH's (class token
appended, its legacy class-token mask; here :class:`~histobag_noncommercial.conch.ConchText`)
with TITAN's sizes (``TitanTextConfig``: 12 layers, width 768, context 128, vocabulary 32007,
768-d output); texts are tokenized by the repository's own ``tokenizer.json`` (transformers'
``PreTrainedTokenizerFast``) to 127 tokens, as ``encode_text`` keeps them. The repository's
``text_transformer.py`` was not readable outside the gated repository: the layout follows
``TitanTextConfig`` (open_clip ``TextTransformer``'s arguments) and the attributes that
published code using TITAN's ``text_encoder`` relies on; that its class-token mask is the
legacy one of CONCH's code (same vocabulary and context) rather than open_clip's corrected
one is the one assumption.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from histobag import ExtractorSpec
from histobag.errors import ExtractorArgumentError, MissingDependencyError, WeightsError
from histobag.extractors.base import ModelBuild
from histobag.slide_encoding import SlideEncoderExtractor
from histobag_noncommercial.conch import ConchArch, ConchText, QueryPool
from histobag_noncommercial.text_options import text_options

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: The Hugging Face repository of the weights and of the tokenizer (gated).
REPO = "MahmoodLab/TITAN"
_TEXT_BATCH = 256

#: Elements of one block of the ALiBi bias (heads x rows x tokens): 128 MB in float32.
BIAS_BLOCK_ELEMENTS = 2**25
#: Largest bias (heads x tokens x tokens) kept for all blocks of a slide: 1 GiB in float32
#: (about 4,700 tiles with 12 heads); larger slides rebuild each block of rows per layer.
BIAS_CACHE_ELEMENTS = 2**28
#: Largest grid (cells) whose distances are looked up in a table of its offsets.
DISTANCE_TABLE_ELEMENTS = 2**24


@dataclass(frozen=True)
class TitanArch:
    """TITAN's sizes (the defaults of the official ``TitanVisionConfig``/``TitanTextConfig``,
    with ``attentional_pool="parallel"`` as ``TitanConfig`` sets it).

    Attributes:
        in_dim: Width of the tile features (``mlp_patch_embed_dim``; CONCH v1.5: 768).
        width: Token width (``embed_dim``).
        depth: Transformer blocks.
        heads: Attention heads (and ALiBi slopes).
        mlp_ratio: Hidden width of the blocks' MLPs, over ``width``.
        pool_queries: Queries of ``attn_pool`` (the captioning pool).
        pool_heads: Heads of both attentional pools.
        text: The text tower's sizes (its ``embed_dim`` is the joint space's, ``width``).
    """

    in_dim: int = 768
    width: int = 768
    depth: int = 6
    heads: int = 12
    mlp_ratio: float = 4.0
    pool_queries: int = 128
    pool_heads: int = 8
    text: ConchArch = field(default_factory=lambda: ConchArch(embed_dim=768))


FULL = TitanArch()


def alibi_slopes(heads: int) -> list[float]:
    """The official ``get_slopes``: ``heads`` geometric slopes; for a count that is not a power
    of two, those of the power below, then every other slope of the power above."""

    def geometric(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(heads).is_integer():
        return geometric(heads)
    below = 2 ** math.floor(math.log2(heads))
    return geometric(below) + geometric(2 * below)[0::2][: heads - below]


def tile_grid(
    features: torch.Tensor, coords: torch.Tensor, extent_px: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``preprocess_features`` without its dense grid.

    Args:
        features: (N, D) tile features.
        coords: (N, 2) level-0 ``(x, y)`` top-left corners.
        extent_px: Level-0 side of one tile (the grid's pitch).

    Returns:
        ``(tokens, cells)``: (M, D) float32 features of the occupied, non-background cells (the
        features of tiles sharing a cell summed), in row-major order of ``(x cell, y cell)``,
        and their (M, 2) int64 cells.
    """
    offsets = coords - coords.min(dim=0).values
    cells = torch.div(offsets, extent_px, rounding_mode="floor").long()
    width = int(cells[:, 1].max()) + 1
    index = cells[:, 0] * width + cells[:, 1]
    occupied, inverse = torch.unique(index, sorted=True, return_inverse=True)
    summed = torch.zeros(len(occupied), features.shape[1], device=features.device)
    summed.index_add_(0, inverse, features.float())
    tissue = (summed != 0).any(dim=1)  # the official background mask
    occupied = occupied[tissue]
    return summed[tissue], torch.stack([occupied // width, occupied % width], dim=1)


class AlibiBias:
    """The 2-D ALiBi bias of a slide, by blocks of query rows.

    Token 0 is the class token (no bias to or from it); tokens 1.. are the cells ``cells``.
    Distances are the official float64 ``sqrt(dx² + dy²)`` rounded to float32, looked up in a
    table of the grid's offsets (computed directly on grids of more than
    :data:`DISTANCE_TABLE_ELEMENTS` cells). The whole bias is built once when it is at most
    :data:`BIAS_CACHE_ELEMENTS`; beyond that, each block is rebuilt when asked for, so memory
    stays at one block whatever the slide's size.

    Args:
        cells: (M, 2) int64 grid cells of the tile tokens.
        slopes: (heads,) float32 slopes.
    """

    def __init__(self, cells: torch.Tensor, slopes: torch.Tensor) -> None:
        self.cells = cells
        self.slopes = slopes.float().view(-1, 1, 1)
        self.length = len(cells) + 1
        heads = len(slopes)
        self.block_rows = max(1, BIAS_BLOCK_ELEMENTS // (heads * self.length))
        extent = (cells.max(dim=0).values + 1).tolist() if len(cells) else [1, 1]
        self.columns = extent[1]
        self.table: torch.Tensor | None = None
        if extent[0] * extent[1] <= DISTANCE_TABLE_ELEMENTS:
            offsets = [torch.arange(n, dtype=torch.float64, device=cells.device) for n in extent]
            table = offsets[0][:, None] ** 2 + offsets[1][None, :] ** 2
            self.table = table.sqrt().float().ravel()
        self.full: torch.Tensor | None = None
        if heads * self.length**2 <= BIAS_CACHE_ELEMENTS:
            full = torch.empty(heads, self.length, self.length, device=cells.device)
            for start, stop in self.blocks():  # block by block: one block's temporaries
                full[:, start:stop] = self.build(start, stop)
            self.full = full

    def build(self, start: int, stop: int) -> torch.Tensor:
        """Bias (heads, stop - start, length) float32 of query rows ``start:stop``."""
        bias = torch.zeros(len(self.slopes), stop - start, self.length, device=self.cells.device)
        first = max(start, 1)
        if first < stop:
            rows = self.cells[first - 1 : stop - 1]
            dx = (rows[:, None, 0] - self.cells[None, :, 0]).abs_()
            dy = (rows[:, None, 1] - self.cells[None, :, 1]).abs_()
            if self.table is not None:
                distance = self.table[dx.mul_(self.columns).add_(dy)]
            else:  # a sparse grid too wide for a table of its offsets
                distance = (dx.square() + dy.square()).double().sqrt().float()
            bias[:, first - start :, 1:] = distance * self.slopes * -1
        return bias

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Bias (heads, stop - start, length) float32 of query rows ``start:stop``."""
        return self.full[:, start:stop] if self.full is not None else self.build(start, stop)

    def blocks(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of the row blocks covering every query."""
        step = self.block_rows
        return [(s, min(s + step, self.length)) for s in range(0, self.length, step)]


class Attention(nn.Module):
    """Multi-head self-attention with a bias added to the scores (``qkv`` and ``proj`` named
    as the official ``Attention``).

    Args:
        width: Token width.
        heads: Attention heads.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, bias: AlibiBias) -> torch.Tensor:
        """Tokens (1, L, width) after attention."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = torch.empty_like(q)
        for start, stop in bias.blocks():
            mask = bias.rows(start, stop).unsqueeze(0).to(q.dtype)
            out[:, :, start:stop] = F.scaled_dot_product_attention(
                q[:, :, start:stop], k, v, attn_mask=mask
            )
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class FeedForward(nn.Module):
    """The blocks' MLP (``fc1``, exact GELU, ``fc2``, as timm's ``Mlp``).

    Args:
        width: Token width.
        hidden: Hidden width.
    """

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the MLP."""
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-LN transformer block (LayerNorm eps 1e-6, no LayerScale).

    Args:
        width: Token width.
        heads: Attention heads.
        mlp_ratio: MLP hidden width over ``width``.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = FeedForward(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, bias: AlibiBias) -> torch.Tensor:
        """Tokens after the block."""
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class TitanVision(nn.Module):
    """TITAN's vision encoder under the official parameter names.

    Args:
        arch: The sizes.
    """

    def __init__(self, arch: TitanArch) -> None:
        super().__init__()
        width = arch.width
        self.patch_embed = nn.Sequential(nn.Linear(arch.in_dim, width), nn.GELU())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.Module()  # the official CustomSequential: its blocks in modules_list
        self.blocks.modules_list = nn.ModuleList(
            Block(width, arch.heads, arch.mlp_ratio) for _ in range(arch.depth)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.attn_pool = QueryPool(width, width, arch.pool_heads, arch.pool_queries)
        self.attn_pool_contrastive = QueryPool(width, width, arch.pool_heads, 1)
        self.proj = nn.Parameter(torch.zeros(width, width))
        slopes = torch.tensor(alibi_slopes(arch.heads), dtype=torch.float32)
        self.register_buffer("slopes", slopes, persistent=False)

    def forward_features(self, tokens: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Normalised tokens (1, M + 1, width) of tile features (M, in_dim) at ``cells``."""
        x = self.patch_embed(tokens.unsqueeze(0).to(self.cls_token.dtype))
        x = torch.cat([self.cls_token.expand(1, -1, -1).to(x.dtype), x], dim=1)
        bias = AlibiBias(cells, self.slopes)
        for block in self.blocks.modules_list:
            x = block(x, bias)
        return self.norm(x)

    def forward(self, features: torch.Tensor, coords: torch.Tensor, extent_px: int) -> torch.Tensor:
        """Slide embedding (1, width) of one slide's tiles.

        Args:
            features: (1, N, in_dim) or (N, in_dim) tile features.
            coords: (1, N, 2) or (N, 2) level-0 ``(x, y)`` top-left corners.
            extent_px: Level-0 side of one tile.
        """
        features, coords = _one_slide(features), _one_slide(coords)
        tokens, cells = tile_grid(features, coords, extent_px)
        return self.attn_pool_contrastive(self.forward_features(tokens, cells))[:, 0]


def _one_slide(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        if x.shape[0] != 1:
            raise ExtractorArgumentError(
                f"TITAN encodes one slide at a time, not a batch of {x.shape[0]}"
            )
        x = x[0]
    return x


class Titan(nn.Module):
    """TITAN as published (``vision_encoder`` and ``text_encoder``, without the removed report
    decoder); ``forward`` is ``encode_slide_from_patch_features``.

    Args:
        arch: The sizes.
        text: Build the text tower too.
    """

    text_encoder: ConchText | None

    def __init__(self, arch: TitanArch = FULL, *, text: bool = True) -> None:
        super().__init__()
        if arch.text.embed_dim != arch.width:
            raise ValueError("the text tower must project into the slide encoder's width")
        self.arch = arch
        self.vision_encoder = TitanVision(arch)
        self.text_encoder = ConchText(arch.text) if text else None

    def forward(self, features: torch.Tensor, coords: torch.Tensor, extent_px: int) -> torch.Tensor:
        """Slide embedding (1, width); see :meth:`TitanVision.forward`."""
        return self.vision_encoder(features, coords, extent_px)

    def slide_to_text_space(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``normalize(embeddings @ vision_encoder.proj)`` (S, width), as the official
        ``zero_shot`` projects slide embeddings before comparing them with texts."""
        proj = self.vision_encoder.proj
        return F.normalize(embeddings.to(proj.dtype) @ proj, dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``encode_text(input_ids, normalize=True)`` of token ids already cut to the context
        less the class token's place (B, 127): L2-normalised (B, width)."""
        if self.text_encoder is None:
            raise ExtractorArgumentError("this TITAN was built without its text tower")
        return F.normalize(self.text_encoder(tokens), dim=-1)


# ------------------------------------------------------------------------------------------
# Checkpoint, factory and extractor
# ------------------------------------------------------------------------------------------


#: The text tower's causal mask, which the model rebuilds: ignored if a checkpoint holds it.
_CAUSAL_MASK = "text_encoder.attn_mask"


def checkpoint_adapter(text: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The published ``model.safetensors`` → the model's state dict: as it is (a saved causal
    mask aside), or without the text tower's entries when the model is built without it."""

    def adapt(state_dict: dict[str, Any]) -> dict[str, Any]:
        if text:
            return {k: v for k, v in state_dict.items() if k != _CAUSAL_MASK}
        return {k: v for k, v in state_dict.items() if not k.startswith("text_encoder.")}

    return adapt


def titan_build(
    arch: TitanArch = FULL, *, text: bool = True, tokenizer: str | os.PathLike[str] | None = None
) -> ModelBuild:
    """ModelBuild of a TITAN of sizes ``arch`` (random weights until loaded)."""
    options = text_options(text, tokenizer)
    model = Titan(arch, text=text).eval()
    return ModelBuild(
        module=model,
        adapt_state_dict=checkpoint_adapter(text),
        num_features=arch.width,
        extractor_cls=TitanExtractor,
        extra={
            "in_features": arch.in_dim,
            **options,
        },
    )


def build_titan(
    spec: ExtractorSpec, *, text: bool = True, tokenizer: str | os.PathLike[str] | None = None
) -> ModelBuild:
    """Factory of ``titan``: the published architecture.

    Args:
        spec: The extractor spec.
        text: Also load the text tower (about 110M parameters) for zero-shot use; ``False``
            keeps only the slide encoder (about 50M).
        tokenizer: Folder (or Hugging Face repository) holding TITAN's ``tokenizer.json``
            (with ``tokenizer_config.json`` and ``special_tokens_map.json``) for
            :meth:`TitanExtractor.text_features`; default: the gated ``MahmoodLab/TITAN``
            repository, as the official code loads it.
    """
    return titan_build(FULL, text=text, tokenizer=tokenizer)


class TitanExtractor(SlideEncoderExtractor):
    """TITAN's slide encoder, with the zero-shot text tower of the official model."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokenizer: PreTrainedTokenizerBase | None = None

    @property
    def titan(self) -> Titan:
        """The network."""
        return self.model  # type: ignore[return-value]

    def _text_encoder(self) -> ConchText:
        encoder = getattr(self.titan, "text_encoder", None)
        if encoder is None:
            raise ExtractorArgumentError(
                f"{self.tag} was built with text=False: build it with text=True for "
                "text_features, slide_to_text_space and zero-shot."
            )
        return encoder

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """TITAN's tokenizer, loaded on first use (see :func:`load_tokenizer`)."""
        if self._tokenizer is None:
            source = self.extra.get("tokenizer")
            tokenizer = load_tokenizer(source, model=self.tag)
            vocab = self._text_encoder().token_embedding.num_embeddings
            if len(tokenizer) > vocab:
                raise WeightsError(
                    f"The tokenizer {source or REPO!r} has {len(tokenizer)} tokens but "
                    f"{self.tag!r} embeds {vocab}: it is not TITAN's tokenizer."
                )
            self._tokenizer = tokenizer
        return self._tokenizer

    def prompt_tokens(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids (P, context - 1): each prompt tokenized with its start and end tokens,
        truncated or padded to the places before the class token's (127), as the official
        ``tokenizer(texts)`` then ``encode_text`` (which drops the last of 128) make them."""
        length = self._text_encoder().context_length - 1
        return self.tokenizer(
            list(prompts),
            max_length=length,
            add_special_tokens=True,
            truncation=True,
            padding="max_length",
            return_tensors="pt",
        )["input_ids"]

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompt embeddings in the joint space, L2-normalised, float32 (P, 768) on the
        model's device: the official ``encode_text(tokenizer(prompts), normalize=True)``."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ExtractorArgumentError("text_features expects a list of strings")
        self._text_encoder()
        if not prompts:
            return torch.zeros(0, self.num_features, device=self.device)
        ids = self.prompt_tokens(prompts).to(self.device)
        outputs = []
        with torch.inference_mode(), self.autocast():
            for start in range(0, len(ids), _TEXT_BATCH):
                outputs.append(self.titan.encode_text(ids[start : start + _TEXT_BATCH]).float())
        return F.normalize(torch.cat(outputs), dim=-1)

    def slide_to_text_space(self, slide_embeddings: Any) -> torch.Tensor:
        """Slide embeddings (S, 768) in the joint space: ``@ vision_encoder.proj``, then
        L2-normalised, float32 (S, 768) on the model's device (the official ``zero_shot``)."""
        emb = torch.as_tensor(slide_embeddings, dtype=torch.float32).to(self.device)
        if emb.ndim == 1:
            emb = emb[None]
        if emb.ndim != 2 or emb.shape[1] != self.num_features:
            raise ExtractorArgumentError(
                f"slide embeddings must be (S, {self.num_features}), got {tuple(emb.shape)}"
            )
        self._text_encoder()
        with torch.inference_mode():
            proj = self.titan.vision_encoder.proj.float()
            return F.normalize(emb @ proj, dim=-1)

    @property
    def logit_scale(self) -> float:
        """1: the official ``zero_shot`` takes the softmax of the cosine similarities
        themselves (no temperature at inference)."""
        return 1.0


def load_tokenizer(source: str | None, *, model: str = "titan") -> PreTrainedTokenizerBase:
    """TITAN's tokenizer as the official code loads it: transformers'
    ``PreTrainedTokenizerFast.from_pretrained`` on the repository (``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json``) or a folder holding its files.

    Raises:
        MissingDependencyError: ``transformers`` is not installed.
        WeightsError: The tokenizer files could not be found or downloaded.
    """
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError as exc:
        raise MissingDependencyError(
            f"Text features of {model!r} need transformers: "
            'pip install "histobag-noncommercial[text]"',
            module="transformers",
            extra="text",
        ) from exc
    try:
        return PreTrainedTokenizerFast.from_pretrained(source or REPO)
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"Could not load TITAN's tokenizer from {source or REPO!r} ({exc}). It is "
            f"tokenizer.json (with tokenizer_config.json and special_tokens_map.json) of the "
            f"gated https://huggingface.co/{REPO}: request access and log in, or pass the "
            f"folder holding them with build_feature_extractor({model!r}, tokenizer=...)."
        ) from exc
