"""MUSK (Xiang et al. 2025): the image branch of a BEiT-3 vision-language model, in plain torch.

MUSK's official code builds a torchscale BEiT-3: a pre-norm "multiway" transformer whose every
linear and norm layer exists twice, ``A`` for image tokens and ``B`` for text tokens, with an
extra LayerNorm inside attention (before ``out_proj``) and inside the MLP (before ``fc2``), and
position embeddings counted from 2 (fairseq's offset). This module rebuilds it under the same
parameter names, so the published ``model.safetensors`` loads as it is; images run the ``A``
weights, texts the ``B`` weights.

Image features are the official ``MUSK.forward(image, with_head=False, out_norm=False)``:
with ``ms_aug=True`` (the model card's setting for linear probes and MIL) the class token of
the 384 px tile ‖ the mean class token of its four quarters upsampled to 384 px (2048
features); without it, the class token alone (1024). ``projection=True`` gives the
``vision_head`` projection of the class token used for image-text retrieval.
:meth:`MUSKExtractor.text_features` gives the official text embeddings (``with_head=True,
out_norm=True``), tokenised by the official ``tokenizer.spm`` (needs ``sentencepiece``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from histobag import ExtractorSpec
from histobag.errors import ExtractorArgumentError, WeightsError
from histobag.extractors.base import FeatureExtractor, ModelBuild
from histobag_noncommercial.musk_tokenizer import TOKENIZER_FILE, MUSKTokenizer, load_tokenizer

#: Which of a multiway layer's two copies runs: ``A`` for image tokens, ``B`` for text.
VISION, TEXT = "A", "B"
#: fairseq's position offset, kept by torchscale: the first token reads position row 2.
POSITION_OFFSET = 2
_TEXT_BATCH = 256


@dataclass(frozen=True)
class BEiT3Arch:
    """Hyper-parameters of ``musk_large_patch16_384`` (torchscale ``EncoderConfig``)."""

    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: int = 4
    image_size: int = 384
    patch_size: int = 16
    vocab_size: int = 64010
    max_text_positions: int = 1024
    eps: float = 1e-5

    @property
    def num_patches(self) -> int:
        """Patch tokens of one image."""
        return (self.image_size // self.patch_size) ** 2


class Multiway(nn.Module):
    """Two copies of a layer, ``A`` (image tokens) and ``B`` (text tokens).

    Args:
        make: Builds one copy.
    """

    def __init__(self, make: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.A = make()
        self.B = make()

    def forward(self, x: torch.Tensor, way: str) -> torch.Tensor:
        """``x`` through the copy of ``way``."""
        return self.A(x) if way == VISION else self.B(x)


class SubLNAttention(nn.Module):
    """Multi-head self-attention with a LayerNorm before the output projection."""

    def __init__(self, arch: BEiT3Arch) -> None:
        super().__init__()
        self.heads = arch.heads
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            setattr(self, name, Multiway(lambda: nn.Linear(arch.width, arch.width)))
        self.inner_attn_ln = Multiway(lambda: nn.LayerNorm(arch.width, eps=arch.eps))

    def forward(self, x: torch.Tensor, way: str, padding: torch.Tensor | None) -> torch.Tensor:
        """Attention over all tokens but those ``padding`` marks (B, L, True = padding)."""
        batch, length, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = (heads(getattr(self, n)(x, way)) for n in ("q_proj", "k_proj", "v_proj"))
        mask = None if padding is None else ~padding[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, length, width)
        return self.out_proj(self.inner_attn_ln(out, way), way)


class SubLNMlp(nn.Module):
    """fc1, exact GELU, LayerNorm, fc2."""

    def __init__(self, arch: BEiT3Arch) -> None:
        super().__init__()
        hidden = arch.width * arch.mlp_ratio
        self.fc1 = nn.Linear(arch.width, hidden)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=arch.eps)
        self.fc2 = nn.Linear(hidden, arch.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP of one copy."""
        return self.fc2(self.ffn_layernorm(F.gelu(self.fc1(x))))


class EncoderLayer(nn.Module):
    """A pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, arch: BEiT3Arch) -> None:
        super().__init__()
        self.self_attn = SubLNAttention(arch)
        self.self_attn_layer_norm = Multiway(lambda: nn.LayerNorm(arch.width, eps=arch.eps))
        self.ffn = Multiway(lambda: SubLNMlp(arch))
        self.final_layer_norm = Multiway(lambda: nn.LayerNorm(arch.width, eps=arch.eps))

    def forward(self, x: torch.Tensor, way: str, padding: torch.Tensor | None) -> torch.Tensor:
        """One block on tokens of one modality."""
        x = x + self.self_attn(self.self_attn_layer_norm(x, way), way, padding)
        return x + self.ffn(self.final_layer_norm(x, way), way)


class Encoder(nn.Module):
    """Position embeddings (``A``: image, ``B``: text), the blocks and the final norm."""

    def __init__(self, arch: BEiT3Arch) -> None:
        super().__init__()
        self.embed_positions = nn.Module()
        image_rows = arch.num_patches + 1 + POSITION_OFFSET  # class token + patches
        self.embed_positions.A = nn.Embedding(image_rows, arch.width)
        self.embed_positions.B = nn.Embedding(arch.max_text_positions, arch.width)
        self.layers = nn.ModuleList(EncoderLayer(arch) for _ in range(arch.depth))
        self.layer_norm = Multiway(lambda: nn.LayerNorm(arch.width, eps=arch.eps))

    def forward(
        self, tokens: torch.Tensor, way: str, padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalised output tokens of embedded input ``tokens`` (B, L, width)."""
        table = self.embed_positions.A if way == VISION else self.embed_positions.B
        length = tokens.shape[1]
        x = tokens + table.weight[POSITION_OFFSET : POSITION_OFFSET + length]
        if padding is not None:
            x = x * (~padding).unsqueeze(-1).to(x.dtype)
        for layer in self.layers:
            x = layer(x, way, padding)
        return self.layer_norm(x, way)


class VisionEmbedding(nn.Module):
    """Patch projection and class token (``mask_token`` is only used in pretraining)."""

    def __init__(self, arch: BEiT3Arch) -> None:
        super().__init__()
        self.image_size = arch.image_size
        self.proj = nn.Conv2d(3, arch.width, arch.patch_size, stride=arch.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, arch.width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class token followed by the patch tokens (B, 1 + N, width)."""
        x = self.proj(images).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)


class BEiT3(nn.Module):
    """torchscale's BEiT-3 under its parameter names."""

    def __init__(self, arch: BEiT3Arch) -> None:
        super().__init__()
        self.text_embed = nn.Embedding(arch.vocab_size, arch.width)
        self.vision_embed = VisionEmbedding(arch)
        self.encoder = Encoder(arch)


class MUSKImage(nn.Module):
    """MUSK (``beit3``, ``vision_head``, ``language_head``, ``logit_scale``); embeds images.

    Args:
        arch: Sizes of the model.
        multiscale: The official ``ms_aug``: add the mean class token of the four quarters
            of the tile upsampled 2x (bicubic), so 2 x width features.
        projection: The official ``with_head``: the ``vision_head`` projection of the class
            token (the image-text space), width features; it ignores ``multiscale`` as the
            official code does.
    """

    def __init__(
        self, arch: BEiT3Arch, *, multiscale: bool = True, projection: bool = False
    ) -> None:
        super().__init__()
        self.arch = arch
        self.multiscale = multiscale and not projection
        self.projection = projection
        self.beit3 = BEiT3(arch)
        self.vision_head = nn.Linear(arch.width, arch.width, bias=False)
        self.language_head = nn.Linear(arch.width, arch.width, bias=False)
        self.logit_scale = nn.Parameter(torch.zeros(()))

    @property
    def num_features(self) -> int:
        """Embedding length."""
        return self.arch.width * (2 if self.multiscale else 1)

    def class_token(self, images: torch.Tensor) -> torch.Tensor:
        """Final normalised class token (B, width) of images at the model's input size."""
        tokens = self.beit3.vision_embed(images)
        return self.beit3.encoder(tokens, VISION)[:, 0]

    def encode_text(self, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """The official ``MUSK.forward(text_description=ids, padding_mask=padding,
        with_head=True, out_norm=True)[1]``: the class token of the text tokens through the
        ``B`` weights, ``language_head``, L2-normalised (B, width)."""
        tokens = self.beit3.text_embed(ids)
        cls = self.beit3.encoder(tokens, TEXT, padding)[:, 0]
        return F.normalize(self.language_head(cls), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, num_features) of a normalised batch (B, 3, 384, 384)."""
        if self.projection:
            return self.vision_head(self.class_token(images))
        if not self.multiscale:
            return self.class_token(images)
        batch, _, side, _ = images.shape
        # Interpolation in float32 as the official code does; scale 1 is the tile itself.
        upsampled = F.interpolate(images.float(), size=2 * side, mode="bicubic").to(images.dtype)
        quarters = upsampled.unflatten(2, (2, side)).unflatten(4, (2, side))
        # (B, C, 2, h, 2, w) -> (2*2*B, C, h, w), row-major over the quarters as the official
        # chessboard split; the mean over them does not depend on the order.
        quarters = quarters.permute(2, 4, 0, 1, 3, 5).reshape(4 * batch, -1, side, side)
        parts = self.class_token(quarters).view(4, batch, -1).mean(0)
        return torch.cat([self.class_token(images), parts], dim=-1)


def build_musk_image(
    arch: BEiT3Arch,
    *,
    multiscale: bool = True,
    projection: bool = False,
    tokenizer: str | Path | None = None,
) -> ModelBuild:
    """A MUSK extractor with hyper-parameters ``arch`` and random weights."""
    for name, value in (("multiscale", multiscale), ("projection", projection)):
        if not isinstance(value, bool):
            raise ExtractorArgumentError(f"{name} must be True or False, not {value!r}")
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        raise ExtractorArgumentError(
            f"tokenizer must be the path of {TOKENIZER_FILE} or of its folder, not {tokenizer!r}"
        )
    module = MUSKImage(arch, multiscale=multiscale, projection=projection).eval()
    return ModelBuild(
        module=module,
        num_features=module.num_features,
        fixed_input_size=arch.image_size,
        recorded_kwargs={"multiscale": multiscale, "projection": projection},
        extractor_cls=MUSKExtractor,
        extra={"tokenizer": None if tokenizer is None else str(tokenizer)},
    )


def build_musk(
    spec: ExtractorSpec,
    *,
    multiscale: bool = True,
    projection: bool = False,
    tokenizer: str | Path | None = None,
) -> ModelBuild:
    """MUSK's image branch: 2048 features by default (the model card's multi-scale class
    token), 1024 with ``multiscale=False`` (TRIDENT's default) or ``projection=True``.

    Args:
        spec: The extractor spec.
        multiscale: Add the mean class token of the tile's quarters at 2x (``ms_aug``).
        projection: The ``vision_head`` projection of the class token (``with_head``), for
            comparing with MUSK's text embeddings.
        tokenizer: ``tokenizer.spm`` (or its folder) for ``text_features``. Default: the
            weights' folder when they are a local file, else an installed official ``musk``
            package's copy.
    """
    return build_musk_image(
        BEiT3Arch(), multiscale=multiscale, projection=projection, tokenizer=tokenizer
    )


class MUSKExtractor(FeatureExtractor):
    """A :class:`~histobag.extractors.base.FeatureExtractor` for MUSK that also embeds text
    into the image-text space."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokenizer: MUSKTokenizer | None = None
        self.tokenizer_source: str | None = self.extra.get("tokenizer") or self._weights_folder()

    def _weights_folder(self) -> str | None:
        """The folder of local weights when it holds ``tokenizer.spm``, else None."""
        source = self.weights_source
        if source.startswith("hf://") or source in ("random", "none"):
            return None
        path = Path(source).expanduser()
        folder = path if path.is_dir() else path.parent
        return str(folder) if (folder / TOKENIZER_FILE).is_file() else None

    @property
    def tokenizer(self) -> MUSKTokenizer:
        """MUSK's tokenizer, loaded on first use (see :func:`load_tokenizer`)."""
        if self._tokenizer is None:
            tokenizer = load_tokenizer(self.tokenizer_source, model=self.tag)
            model: MUSKImage = self.model  # type: ignore[assignment]
            embedded = model.beit3.text_embed.num_embeddings
            if len(tokenizer) > embedded:
                raise WeightsError(
                    f"The tokenizer {self.tokenizer_source!r} has {len(tokenizer)} tokens but "
                    f"{self.tag!r} embeds {embedded}: it is not MUSK's tokenizer."
                )
            self._tokenizer = tokenizer
        return self._tokenizer

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings, float32 (len(texts), 1024) on the model's device.

        As the official ``model(text_description=ids, padding_mask=pad, with_head=True,
        out_norm=True)[1]`` with ``utils.xlm_tokenizer(text, tokenizer, max_len=100)``: longer
        texts are cut to 98 pieces. Compare them with image features built with
        ``projection=True``, L2-normalised, by a dot product.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ExtractorArgumentError("text_features expects a list of strings")
        model: MUSKImage = self.model  # type: ignore[assignment]
        if not texts:
            return torch.zeros(0, model.arch.width, device=self.device)
        tokenizer = self.tokenizer
        outputs = []
        for start in range(0, len(texts), _TEXT_BATCH):
            ids, padding = tokenizer(list(texts[start : start + _TEXT_BATCH]))
            with torch.inference_mode(), self.autocast():
                embedded = model.encode_text(ids.to(self.device), padding.to(self.device))
            outputs.append(F.normalize(embedded.float(), dim=-1))
        return torch.cat(outputs)
