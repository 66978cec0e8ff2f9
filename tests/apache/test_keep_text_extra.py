"""KEEP's tokenizer is an optional extra of histobag-apache, named when transformers is missing."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from histobag.errors import MissingDependencyError
from histobag_apache import keep_text

PYPROJECT = Path(__file__).resolve().parents[2] / "plugins" / "apache" / "pyproject.toml"


def test_apache_pack_has_a_text_extra_with_transformers() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    text = project["optional-dependencies"]["text"]
    assert any(re.match(r"transformers\b", requirement) for requirement in text)
    assert not any("transformers" in dep for dep in project["dependencies"])  # images need none


def test_tokenizer_class_is_transformers_bert_fast() -> None:
    from transformers import BertTokenizerFast

    assert keep_text.bert_tokenizer_class() is BertTokenizerFast


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"histobag-apache\[text\]") as caught:
        keep_text.bert_tokenizer_class()
    assert (caught.value.extra, caught.value.module) == ("text", "transformers")
    assert isinstance(caught.value, ImportError)
