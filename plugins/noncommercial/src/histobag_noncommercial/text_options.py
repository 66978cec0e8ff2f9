"""The ``text`` and ``tokenizer`` arguments of slide encoders with a text tower (TITAN,
PRISM): checked once, recorded in the extractor's ``extra``."""

from __future__ import annotations

import os
from typing import Any

from histobag.errors import ExtractorArgumentError


def text_options(text: Any, tokenizer: Any) -> dict[str, Any]:
    """``{"text": bool, "tokenizer": str | None}`` from the factory's arguments.

    Raises:
        ExtractorArgumentError: ``text`` is not a bool, or ``tokenizer`` is not a folder or
            a Hugging Face repository id.
    """
    if not isinstance(text, bool):
        raise ExtractorArgumentError(f"text must be True or False, not {text!r}")
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        raise ExtractorArgumentError(
            f"tokenizer must be a folder or a Hugging Face repository id, not {tokenizer!r}"
        )
    return {"text": text, "tokenizer": None if tokenizer is None else os.fspath(tokenizer)}
