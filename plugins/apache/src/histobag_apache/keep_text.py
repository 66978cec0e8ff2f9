"""KEEP's text tower: a BERT encoder in plain torch, under transformers' ``BertModel`` names.

The sizes come from the ``text_config`` of the published ``config.json`` (read when text is
first embedded); the weights are the ``text.*`` tensors of the same checkpoint file as the
image branch. ``encode_text`` is the L2-normalised ``pooler_output`` (tanh of a dense layer
on the final class token), as the official ``KEEPModel.encode_text``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from histobag.errors import MissingDependencyError, WeightsError

#: Tensors of older transformers checkpoints that are not weights (position index buffers).
LEGACY_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def bert_tokenizer_class() -> type:
    """The class KEEP's tokenizer files load into: transformers' ``BertTokenizerFast``.

    Raises:
        MissingDependencyError: transformers is not installed (the ``text`` extra of
            histobag-apache installs it).
    """
    try:
        from transformers import BertTokenizerFast
    except ImportError as exc:
        raise MissingDependencyError(
            "Text features of 'keep' need its BERT tokenizer from the transformers package: "
            'pip install "histobag-apache[text]" (or pip install transformers)',
            module="transformers",
            extra="text",
        ) from exc
    return BertTokenizerFast


@dataclass(frozen=True)
class BertArch:
    """The ``BertConfig`` fields the encoder needs (defaults: ``BertConfig``'s)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_config(cls, text_config: dict[str, Any]) -> BertArch:
        """The sizes of a ``text_config`` dictionary.

        Raises:
            WeightsError: It asks for something this encoder does not implement.
        """
        act = text_config.get("hidden_act", "gelu")
        position = text_config.get("position_embedding_type", "absolute")
        if act != "gelu" or position != "absolute":
            raise WeightsError(
                f"KEEP's text_config asks for hidden_act={act!r}, "
                f"position_embedding_type={position!r}; only 'gelu' and 'absolute' are built"
            )
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in text_config.items() if k in names})


class _SelfAttention(nn.Module):
    def __init__(self, arch: BertArch) -> None:
        super().__init__()
        width = arch.hidden_size
        self.heads = arch.num_attention_heads
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(batch, length, width)


class _DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: BERT's post-norm output of a sub-layer."""

    def __init__(self, width_in: int, arch: BertArch) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, arch.hidden_size)
        self.LayerNorm = nn.LayerNorm(arch.hidden_size, eps=arch.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, arch: BertArch) -> None:
        super().__init__()
        self.self = _SelfAttention(arch)
        self.output = _DenseNorm(arch.hidden_size, arch)


class _Layer(nn.Module):
    def __init__(self, arch: BertArch) -> None:
        super().__init__()
        self.attention = _Attention(arch)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(arch.hidden_size, arch.intermediate_size)
        self.output = _DenseNorm(arch.intermediate_size, arch)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention.output(self.attention.self(x, mask), x)
        return self.output(F.gelu(self.intermediate.dense(x)), x)


class BertText(nn.Module):
    """BERT's embeddings, post-norm encoder and pooler; ``forward`` gives ``pooler_output``.

    Args:
        arch: Sizes of the encoder.
    """

    def __init__(self, arch: BertArch) -> None:
        super().__init__()
        width = arch.hidden_size
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(arch.vocab_size, width)
        self.embeddings.position_embeddings = nn.Embedding(arch.max_position_embeddings, width)
        self.embeddings.token_type_embeddings = nn.Embedding(arch.type_vocab_size, width)
        self.embeddings.LayerNorm = nn.LayerNorm(width, eps=arch.layer_norm_eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Layer(arch) for _ in range(arch.num_hidden_layers))
        self.pooler = nn.Module()
        self.pooler.dense = nn.Linear(width, width)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        """``tanh(dense(h[:, 0]))`` of the final hidden states (B, hidden_size)."""
        emb = self.embeddings
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = emb.word_embeddings(input_ids) + emb.token_type_embeddings(token_type_ids)
        x = emb.LayerNorm(x + emb.position_embeddings(positions))
        mask = attention_mask.bool()[:, None, None, :]  # True: attend
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return torch.tanh(self.pooler.dense(x[:, 0]))


def text_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The ``text.*`` tensors of a KEEP checkpoint file, prefix removed, legacy buffers left
    out (from a ``.safetensors`` file only those tensors are read)."""
    prefix = "text."
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            names = [k for k in handle.keys() if k.startswith(prefix)]  # noqa: SIM118 (no __iter__)
            state = {k[len(prefix) :]: handle.get_tensor(k) for k in names}
    else:
        full = torch.load(path, map_location="cpu", weights_only=True)
        state = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
    if not state:
        raise WeightsError(f"{str(path)!r} holds no text.* tensors: it is not a full KEEP file")
    return {k: v for k, v in state.items() if k not in LEGACY_BUFFERS}
