"""CONCH v1 and v1.5 (Mahmood Lab): the image towers, and CONCH's text tower, in torch + timm.

CONCH v1 is a CoCa model: a timm ViT-B/16 (448 px, position embeddings interpolated for other
sizes) whose tokens are pooled by one learned query (``attn_pool_contrast``), normalised
(``ln_contrast``) and, for image-text use, projected (``proj_contrast``). The official
``encode_image(images, proj_contrast, normalize)`` is reproduced with both options; feature
extraction uses ``proj_contrast=False, normalize=False`` as the model card recommends. The text
tower (a causal transformer with a class token appended, CoCa style) gives
:meth:`ConchExtractor.text_features`.

CONCH v1.5 (the patch encoder of TITAN) is a ViT-L/16 with LayerScale whose 14x14 position
embeddings are interpolated to the input's grid (bicubic, DINO style, as the official code), its
tokens pooled by one query (``to_q``/``to_kv``/``to_out``) and normalised: 768 features.

Both load the published checkpoints under their own key names; the captioning parts that CONCH
v1's file may hold (``attn_pool_caption``, ``ln_caption``, ``text_decoder``) are not used.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models import VisionTransformer
from torch import nn

from histobag import ExtractorSpec
from histobag.errors import ExtractorArgumentError, MissingDependencyError, WeightsError
from histobag.extractors.base import FeatureExtractor, ModelBuild

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: The tokenizer file inside the official ``conch`` package (``conch/open_clip_custom``).
TOKENIZER_FILE = "conch_byte_level_bpe_uncased.json"
#: Where the official package keeps it, below the package folder.
_PACKAGE_TOKENIZER = Path("open_clip_custom") / "tokenizers" / TOKENIZER_FILE
_TEXT_BATCH = 256


@dataclass(frozen=True)
class ConchArch:
    """CONCH v1's sizes: ``conch_ViT-B-16.json`` of the official code.

    Attributes:
        width: Width of the image trunk (a timm ViT, GELU, LayerNorm eps 1e-6).
        layers: Blocks of the image trunk.
        heads: Attention heads of the image trunk.
        patch_size: Patch side in pixels.
        image_size: Side the trunk's position embeddings are laid out for.
        embed_dim: Width of the pooled, normalised and projected embeddings.
        pool_heads: Heads of the query-pooling attention.
        text_width: Width of the text transformer.
        text_layers: Blocks of the text transformer.
        text_heads: Attention heads of the text transformer.
        vocab_size: Tokens the text tower embeds.
        context_length: Text positions, the appended class token included.
        pad_id: The padding token, which the class token does not attend to.
    """

    width: int = 768
    layers: int = 12
    heads: int = 12
    patch_size: int = 16
    image_size: int = 448
    embed_dim: int = 512
    pool_heads: int = 8
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    vocab_size: int = 32007
    context_length: int = 128
    pad_id: int = 0


@dataclass(frozen=True)
class Conch15Arch:
    """CONCH v1.5's sizes (the official ``CONCHVisionTower``).

    Attributes:
        width: Width of the ViT-L trunk.
        layers: Blocks of the trunk.
        heads: Attention heads of the trunk.
        patch_size: Patch side in pixels.
        grid: Side of the trunk's grid of position embeddings (built for 224 px).
        layer_scale: Initial LayerScale value (its presence is what matters).
        embed_dim: Width of the pooled, normalised embedding.
        pool_heads: Heads of the query-pooling attention.
    """

    width: int = 1024
    layers: int = 24
    heads: int = 16
    patch_size: int = 16
    grid: int = 14
    layer_scale: float = 1.0
    embed_dim: int = 768
    pool_heads: int = 8


CONCH = ConchArch()
CONCH_V1_5 = Conch15Arch()


class QueryPool(nn.Module):
    """Learned queries attending to normalised tokens, as ``nn.MultiheadAttention`` (CONCH v1's
    ``attn_pool_contrast``: keys and values wider than the queries, biased projections).

    Args:
        width: Width of the queries and of the output.
        context: Width of the tokens attended to.
        heads: Attention heads.
        queries: Number of learned queries.
    """

    def __init__(self, width: int, context: int, heads: int, queries: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(queries, width))
        self.attn = nn.MultiheadAttention(
            width, heads, kdim=context, vdim=context, batch_first=True
        )
        self.ln_q = nn.LayerNorm(width)
        self.ln_k = nn.LayerNorm(context)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled (B, queries, width) from tokens (B, N, context)."""
        keys = self.ln_k(tokens)
        query = self.ln_q(self.query).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.attn(query, keys, keys, need_weights=False)[0]


class SplitKVPool(nn.Module):
    """Learned queries attending to normalised tokens through bias-free ``to_q``, ``to_kv`` and
    ``to_out`` projections (CONCH v1.5's ``attn_pool_contrast``).

    Args:
        width: Width of the queries and of the output.
        context: Width of the tokens attended to.
        heads: Attention heads.
        queries: Number of learned queries.
    """

    def __init__(self, width: int, context: int, heads: int, queries: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(queries, width))
        self.ln_k = nn.LayerNorm(context)
        self.ln_q = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(context, 2 * width, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled (B, queries, width) from tokens (B, N, context)."""
        batch = tokens.shape[0]
        query = self.to_q(self.ln_q(self.query))
        keys, values = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, W) -> (B, heads, L, W / heads)
            return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        query = split(query.unsqueeze(0).expand(batch, -1, -1))
        out = F.scaled_dot_product_attention(query, split(keys), split(values))
        return self.to_out(out.transpose(1, 2).flatten(2))


class ConchVisual(nn.Module):
    """CONCH v1's image tower: timm ViT trunk, query pooling, LayerNorm, optional projection.

    Args:
        arch: Sizes of the model.
    """

    def __init__(self, arch: ConchArch) -> None:
        super().__init__()
        # The official tower: timm's defaults (LayerNorm eps 1e-6, GELU, class token), all
        # tokens returned, position embeddings interpolated for other input sizes.
        self.trunk = VisionTransformer(
            img_size=arch.image_size,
            patch_size=arch.patch_size,
            embed_dim=arch.width,
            depth=arch.layers,
            num_heads=arch.heads,
            mlp_ratio=4,
            num_classes=0,
            dynamic_img_size=True,
        )
        self.attn_pool_contrast = QueryPool(arch.embed_dim, arch.width, arch.pool_heads)
        self.ln_contrast = nn.LayerNorm(arch.embed_dim)
        self.proj_contrast = nn.Parameter(torch.zeros(arch.embed_dim, arch.embed_dim))

    def forward(self, images: torch.Tensor, *, project: bool) -> torch.Tensor:
        """The pooled, normalised embedding (B, embed_dim), projected if ``project``."""
        pooled = self.attn_pool_contrast(self.trunk.forward_features(images))[:, 0]
        pooled = self.ln_contrast(pooled)
        return pooled @ self.proj_contrast if project else pooled


class TextBlock(nn.Module):
    """A pre-norm transformer block of CONCH's text tower (exact GELU, biased projections).

    Args:
        width: Token width.
        heads: Attention heads.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L, width) after the block; ``mask`` is additive, (B * heads, L, L)."""
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ConchText(nn.Module):
    """CONCH's text tower: token and position embeddings, a class embedding appended after the
    tokens, causal blocks, and the normalised class token projected to the joint space.

    Args:
        arch: Sizes of the model.
    """

    def __init__(self, arch: ConchArch) -> None:
        super().__init__()
        self.pad_id = arch.pad_id
        self.heads = arch.text_heads
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(arch.context_length, arch.text_width))
        self.cls_emb = nn.Parameter(torch.zeros(arch.text_width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            TextBlock(arch.text_width, arch.text_heads) for _ in range(arch.text_layers)
        )
        self.ln_final = nn.LayerNorm(arch.text_width)
        self.text_projection = nn.Parameter(torch.zeros(arch.text_width, arch.embed_dim))

    @property
    def context_length(self) -> int:
        """Text positions, the class token included: texts get one fewer token."""
        return self.positional_embedding.shape[0]

    def attention_mask(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask (B * heads, L + 1, L + 1): causal, and the class token (last row)
        ignores keys one place after each padding token, as the official CoCa mask does."""
        batch, length = tokens.shape
        size = length + 1
        blocked = torch.full((size, size), float("-inf"), device=tokens.device, dtype=dtype)
        mask = blocked.triu(1).expand(batch, size, size).clone()
        padding = torch.zeros(tokens.shape, device=tokens.device, dtype=dtype)
        mask[:, -1, 1:] = padding.masked_fill(tokens == self.pad_id, float("-inf"))
        return mask.repeat_interleave(self.heads, dim=0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Projected embeddings (B, embed_dim) of token ids (B, L), L < context_length."""
        x = self.token_embedding(tokens)
        x = torch.cat([x, self.cls_emb.to(x.dtype).expand(x.shape[0], 1, -1)], dim=1)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        mask = self.attention_mask(tokens, x.dtype)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        return self.ln_final(x[:, -1]) @ self.text_projection


class ConchImageText(nn.Module):
    """CONCH v1 as published (both towers and ``logit_scale``); ``forward`` embeds images as
    the official ``encode_image(images, proj_contrast, normalize)``.

    Args:
        arch: Sizes of the model.
        proj_contrast: Apply the image projection (the joint image-text space).
        normalize: L2-normalise the embeddings (images and texts).
    """

    def __init__(self, arch: ConchArch, *, proj_contrast: bool, normalize: bool) -> None:
        super().__init__()
        self.proj_contrast = proj_contrast
        self.normalize = normalize
        self.visual = ConchVisual(arch)
        self.text = ConchText(arch)
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, embed_dim) of a normalised batch (B, 3, H, W)."""
        embedding = self.visual(images, project=self.proj_contrast)
        return F.normalize(embedding, dim=-1) if self.normalize else embedding

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings (B, embed_dim) of token ids (B, L), normalised if ``normalize``."""
        embedding = self.text(tokens)
        return F.normalize(embedding, dim=-1) if self.normalize else embedding


class Conch15(nn.Module):
    """CONCH v1.5's image tower: ViT-L/16 trunk, query pooling, LayerNorm.

    Args:
        arch: Sizes of the model.
    """

    def __init__(self, arch: Conch15Arch) -> None:
        super().__init__()
        # dynamic_img_size only frees the patch embedding from its 224 px; the position
        # embeddings are interpolated here, as the official code does.
        self.trunk = VisionTransformer(
            img_size=arch.grid * arch.patch_size,
            patch_size=arch.patch_size,
            embed_dim=arch.width,
            depth=arch.layers,
            num_heads=arch.heads,
            mlp_ratio=4,
            qkv_bias=True,
            init_values=arch.layer_scale,
            num_classes=0,
            dynamic_img_size=True,
        )
        self.attn_pool_contrast = SplitKVPool(arch.embed_dim, arch.width, arch.pool_heads)
        self.ln_contrast = nn.LayerNorm(arch.embed_dim)

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """Position embeddings (1, 1 + rows * cols, width) for a grid of patches: the stored
        ones when the grid is theirs, else their patch part resized bicubically by the factor
        ``(side + 0.1) / grid`` (the official DINO-style interpolation)."""
        stored = self.trunk.pos_embed
        count = stored.shape[1] - 1
        if rows * cols == count and rows == cols:
            return stored
        side = math.isqrt(count)
        grid = stored[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        factors = ((rows + 0.1) / side, (cols + 0.1) / side)
        grid = F.interpolate(grid, scale_factor=factors, mode="bicubic")
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1).to(stored.dtype)
        return torch.cat([stored[:, :1], grid], dim=1)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's normalised tokens (B, 1 + patches, width)."""
        trunk = self.trunk
        patches = trunk.patch_embed(images)  # (B, rows, cols, width)
        batch, rows, cols, width = patches.shape
        cls = trunk.cls_token.expand(batch, -1, -1)
        x = torch.cat([cls, patches.reshape(batch, rows * cols, width)], dim=1)
        x = trunk.norm_pre(x + self.position_embedding(rows, cols))
        return trunk.norm(trunk.blocks(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, embed_dim) of a normalised batch (B, 3, H, W)."""
        return self.ln_contrast(self.attn_pool_contrast(self.forward_features(images))[:, 0])


#: Parts of CONCH v1's checkpoint used only for captioning: not loaded.
_CAPTIONING = ("text_decoder.", "visual.attn_pool_caption.", "visual.ln_caption.")


def _resized(position: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """A checkpoint's position embeddings (1, 1 + N, C) on another grid, bilinearly, as the
    official loaders resize them when the checkpoint's grid differs from the model's."""
    if position.shape[1] - 1 == grid[0] * grid[1]:
        return position
    return resample_abs_pos_embed(
        position, new_size=list(grid), num_prefix_tokens=1, interpolation="bilinear",
        antialias=False, verbose=False,
    )  # fmt: skip


def conch_adapter(grid: tuple[int, int]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The conversion of a CONCH v1 checkpoint for a trunk with position grid ``grid``: a
    DataParallel ``module.`` prefix removed, the captioning parts dropped, the position
    embeddings resized if their grid differs (as the official ``load_checkpoint``)."""

    def adapt(state_dict: dict[str, Any]) -> dict[str, Any]:
        if state_dict and next(iter(state_dict)).startswith("module"):
            state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
        kept = {k: v for k, v in state_dict.items() if not k.startswith(_CAPTIONING)}
        key = "visual.trunk.pos_embed"
        if key in kept:
            kept[key] = _resized(kept[key], grid)
        return kept

    return adapt


def conch15_adapter(grid: tuple[int, int]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The conversion of a CONCH v1.5 checkpoint: position embeddings resized to ``grid`` when
    theirs differs (as the official ``create_model_from_pretrained``)."""

    def adapt(state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict = dict(state_dict)
        key = "trunk.pos_embed"
        if key in state_dict:
            state_dict[key] = _resized(state_dict[key], grid)
        return state_dict

    return adapt


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ExtractorArgumentError(f"{name} must be True or False, not {value!r}")
    return value


def build_conch_model(
    arch: ConchArch,
    *,
    proj_contrast: bool = False,
    normalize: bool = False,
    tokenizer: str | None = None,
) -> ModelBuild:
    """A CONCH v1 extractor with sizes ``arch`` and random weights (see :func:`build_conch`)."""
    project, unit = _flag("proj_contrast", proj_contrast), _flag("normalize", normalize)
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        raise ExtractorArgumentError(
            f"tokenizer must be the path of {TOKENIZER_FILE} or of its folder, not {tokenizer!r}"
        )
    model = ConchImageText(arch, proj_contrast=project, normalize=unit).eval()
    grid = model.visual.trunk.patch_embed.grid_size
    return ModelBuild(
        module=model,
        adapt_state_dict=conch_adapter(tuple(grid)),
        num_features=arch.embed_dim,
        input_multiple=arch.patch_size,
        extractor_cls=ConchExtractor,
        extra={"tokenizer": None if tokenizer is None else str(tokenizer)},
    )


def build_conch(
    spec: ExtractorSpec,
    *,
    proj_contrast: bool = False,
    normalize: bool = False,
    tokenizer: str | None = None,
) -> ModelBuild:
    """CONCH v1: 512 features, the official ``encode_image(x, proj_contrast, normalize)``.

    Args:
        spec: The extractor spec.
        proj_contrast: Project into the image-text space (for zero-shot use with
            :meth:`ConchExtractor.text_features`). Default: no projection, as the model card
            recommends for feature extraction (linear probes, multiple-instance learning).
        normalize: L2-normalise image (and text) embeddings.
        tokenizer: ``conch_byte_level_bpe_uncased.json`` of the official CONCH repository, or
            its folder, for ``text_features``. Default: the file inside the installed official
            ``conch`` package.
    """
    return build_conch_model(
        CONCH, proj_contrast=proj_contrast, normalize=normalize, tokenizer=tokenizer
    )


def build_conch15_model(arch: Conch15Arch) -> ModelBuild:
    """A CONCH v1.5 extractor with sizes ``arch`` and random weights."""
    model = Conch15(arch).eval()
    return ModelBuild(
        module=model,
        adapt_state_dict=conch15_adapter((arch.grid, arch.grid)),
        num_features=arch.embed_dim,
        input_multiple=arch.patch_size,
    )


def build_conch_v1_5(spec: ExtractorSpec) -> ModelBuild:
    """CONCH v1.5: 768 features, the pooled and normalised trunk tokens."""
    return build_conch15_model(CONCH_V1_5)


class ConchExtractor(FeatureExtractor):
    """A :class:`~histobag.extractors.base.FeatureExtractor` for CONCH v1 that also embeds
    text into the image-text space."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.tokenizer_source: str | None = self.extra.get("tokenizer")

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """CONCH's tokenizer, loaded on first use (see :func:`load_tokenizer`)."""
        if self._tokenizer is None:
            tokenizer = load_tokenizer(self.tokenizer_source, model=self.tag)
            model: ConchImageText = self.model  # type: ignore[assignment]
            embedded = model.text.token_embedding.num_embeddings
            if len(tokenizer) > embedded:
                raise WeightsError(
                    f"The tokenizer {self.tokenizer_source!r} has {len(tokenizer)} tokens but "
                    f"{self.tag!r} embeds {embedded}: it is not CONCH's tokenizer."
                )
            self._tokenizer = tokenizer
        return self._tokenizer

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Text embeddings, float32 (len(texts), 512) on the model's device.

        As the official ``encode_text(tokenize(tokenizer, texts), normalize)``: each text
        tokenized to 127 tokens (truncated or padded), the class token appended; projected
        into the joint space, L2-normalised when the extractor was built with
        ``normalize=True``. Compare them with image features built with
        ``proj_contrast=True`` (the unprojected default lies in another space).
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ExtractorArgumentError("text_features expects a list of strings")
        model: ConchImageText = self.model  # type: ignore[assignment]
        if not texts:
            return torch.zeros(0, self.num_features, device=self.device)
        tokenizer = self.tokenizer
        outputs = []
        for start in range(0, len(texts), _TEXT_BATCH):
            tokens = tokenizer(
                list(texts[start : start + _TEXT_BATCH]),
                max_length=model.text.context_length - 1,  # the last place is the class token's
                truncation=True,
                padding="max_length",
                return_tensors="pt",
            )["input_ids"].to(self.device)
            with torch.inference_mode(), self.autocast():
                outputs.append(model.encode_text(tokens).float())
        return torch.cat(outputs)


def installed_tokenizer() -> Path | None:
    """The tokenizer file of the installed official ``conch`` package, if there is one (found
    without importing the package)."""
    spec = importlib.util.find_spec("conch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / _PACKAGE_TOKENIZER
        if path.is_file():
            return path
    return None


def load_tokenizer(source: str | None, *, model: str = "conch") -> PreTrainedTokenizerBase:
    """CONCH's byte-level BPE tokenizer, as the official ``get_tokenizer()`` builds it.

    Args:
        source: The tokenizer file, or a folder holding it; ``None``: the file of the installed
            official ``conch`` package.
        model: The registered name, for messages.

    Raises:
        MissingDependencyError: ``transformers`` is not installed, or no tokenizer file was
            given and the official ``conch`` package (the only one shipping it, not on PyPI)
            is not installed.
        WeightsError: The file given does not exist or is not a tokenizer.
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
    if source is None:
        path = installed_tokenizer()
        if path is None:
            raise MissingDependencyError(
                f"Text features of {model!r} need CONCH's tokenizer, {TOKENIZER_FILE}, which "
                "only the official CONCH package ships (it is not on PyPI): pip install "
                "git+https://github.com/mahmoodlab/CONCH.git, or pass the file from that "
                f"repository (conch/{_PACKAGE_TOKENIZER.as_posix()}) with "
                f"build_feature_extractor({model!r}, tokenizer=...). Also needed: "
                'pip install "histobag-noncommercial[text]"',
                module="conch",
                extra="text",
            )
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            path = path / TOKENIZER_FILE
    if not path.is_file():
        raise WeightsError(f"No CONCH tokenizer file at {str(path)!r} (expected {TOKENIZER_FILE})")
    try:
        return PreTrainedTokenizerFast(
            tokenizer_file=str(path),
            bos_token="<start_of_text>",
            eos_token="<end_of_text>",
            pad_token="<pad>",
        )
    except Exception as exc:  # tokenizers raises its own untyped errors on a malformed file
        raise WeightsError(f"Could not read a tokenizer from {str(path)!r}: {exc}") from exc
