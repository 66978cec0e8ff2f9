"""MUSK's text tokenisation: its SentencePiece model read as the official code reads it.

The official code builds ``transformers.XLMRobertaTokenizer("tokenizer.spm")`` (the
SentencePiece-backed class of transformers 4) and pads each text with ``utils.xlm_tokenizer``
to 100 tokens. That tokenizer numbers pieces the fairseq way: ``<s>`` 0, ``<pad>`` 1, ``</s>``
2, ``<unk>`` 3, then every SentencePiece id shifted by one (SentencePiece's own unknown, id 0,
becomes 3). This module does the same with ``sentencepiece`` alone, which transformers 5 no
longer uses for this class.

The file, ``tokenizer.spm``, is published in the official GitHub repository
(``musk/models/tokenizer.spm``), not next to the weights on the Hugging Face Hub.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from histobag.errors import MissingDependencyError, WeightsError

TOKENIZER_FILE = "tokenizer.spm"
#: Where the official repository keeps it, and where an editable install of it finds it.
OFFICIAL_URL = "https://github.com/lilab-stanford/MUSK/blob/main/musk/models/tokenizer.spm"
_PACKAGE_TOKENIZER = Path("models") / TOKENIZER_FILE

#: ``utils.xlm_tokenizer(..., max_len=100)`` of the official code, as its README calls it.
TEXT_LENGTH = 100
BOS, PAD, EOS, UNK = 0, 1, 2, 3
#: fairseq's shift of SentencePiece ids (``fairseq_offset`` of XLMRobertaTokenizer).
FAIRSEQ_OFFSET = 1


class MUSKTokenizer:
    """Token ids and padding masks of texts, as ``XLMRobertaTokenizer`` + ``xlm_tokenizer``.

    Args:
        processor: The loaded SentencePiece model.
        length: Tokens per text, ``<s>`` and ``</s>`` included (longer texts are cut).
    """

    def __init__(self, processor: Any, length: int = TEXT_LENGTH) -> None:
        self.processor = processor
        self.length = length

    def __len__(self) -> int:
        """Ids the tokenizer can produce: the 4 fairseq specials, the pieces, ``<mask>``."""
        return int(self.processor.get_piece_size()) + FAIRSEQ_OFFSET + 1

    def ids(self, text: str) -> list[int]:
        """``<s>``, the text's pieces (at most ``length - 2``), ``</s>``."""
        pieces = self.processor.encode(text)
        shifted = [p + FAIRSEQ_OFFSET if p != 0 else UNK for p in pieces]
        return [BOS, *shifted[: self.length - 2], EOS]

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, length) padded with ``<pad>``, padding mask (B, length), True = padding)."""
        rows = [self.ids(text) for text in texts]
        ids = torch.full((len(rows), self.length), PAD, dtype=torch.long)
        padding = torch.ones((len(rows), self.length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            padding[i, : len(row)] = False
        return ids, padding


def installed_tokenizer() -> Path | None:
    """``musk/models/tokenizer.spm`` of an installed official ``musk`` package (an editable
    install of the GitHub repository has it), found without importing the package."""
    spec = importlib.util.find_spec("musk")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / _PACKAGE_TOKENIZER
        if path.is_file():
            return path
    return None


def load_tokenizer(source: str | Path | None, *, model: str = "musk") -> MUSKTokenizer:
    """MUSK's tokenizer from ``tokenizer.spm``.

    Args:
        source: The file, or a folder holding it; ``None``: the installed official package's.
        model: The registered name, for messages.

    Raises:
        MissingDependencyError: ``sentencepiece`` is not installed, or no file was given and
            no official ``musk`` package with it is installed.
        WeightsError: The file does not exist or is not a SentencePiece model.
    """
    try:
        import sentencepiece
    except ImportError as exc:
        raise MissingDependencyError(
            f"Text features of {model!r} need sentencepiece: "
            'pip install "histobag-noncommercial[text]"',
            module="sentencepiece",
            extra="text",
        ) from exc
    advice = (
        f"MUSK's tokenizer is {TOKENIZER_FILE} from the official repository ({OFFICIAL_URL}); "
        f"keep it next to the weights file or pass it with build_feature_extractor({model!r}, "
        "tokenizer=...)"
    )
    if source is None:
        path = installed_tokenizer()
        if path is None:
            raise WeightsError(f"No {TOKENIZER_FILE} found. {advice}")
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            path = path / TOKENIZER_FILE
    if not path.is_file():
        raise WeightsError(f"No MUSK tokenizer file at {str(path)!r}. {advice}")
    try:
        processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise WeightsError(f"{str(path)!r} is not a SentencePiece model ({exc}). {advice}") from exc
    return MUSKTokenizer(processor)
