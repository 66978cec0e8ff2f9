"""The generated CLI reference lists every subcommand and every option of the parser."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from histobag.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def load_generator():
    """docs/hooks/generate.py, the mkdocs hook that writes the generated pages."""
    spec = importlib.util.spec_from_file_location("docs_generate", REPO / "docs/hooks/generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def sections(page: str) -> dict[str, str]:
    """The page's ``## histobag NAME`` sections by NAME."""
    parts = re.split(r"^## histobag (\S+).*$", page, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.fixture(scope="module")
def page() -> str:
    return load_generator().cli_reference_markdown()


def test_one_section_per_subcommand(page):
    assert list(sections(page)) == list(subparsers(build_parser()))


def test_every_argument_is_listed_with_its_help(page):
    found = sections(page)
    for name, sub in subparsers(build_parser()).items():
        section = found[name]
        rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            labels = action.option_strings or [action.metavar or action.dest]
            row = [r for r in rows if r.startswith("| " + f"`{labels[0]}`")]
            assert len(row) == 1, f"{name}: {labels[0]} not listed"
            assert all(f"`{label}`" in row[0] for label in labels)
            if action.help:
                words = re.sub(r"%\(\w+\)s", "", action.help).split()[:4]
                assert " ".join(words).replace("|", r"\|") in row[0]


def test_defaults_are_expanded(page):
    found = sections(page)
    templated = [
        (name, action)
        for name, sub in subparsers(build_parser()).items()
        for action in sub._actions
        if action.help and "%(default)s" in action.help
    ]
    assert templated, "the parser has no help with %(default)s any more: drop this test"
    assert "%(" not in page
    for name, action in templated:
        (row,) = [r for r in found[name].splitlines() if f"`{action.option_strings[0]}`" in r]
        assert str(action.default) in row


def test_the_top_level_table_links_every_section(page):
    for name in subparsers(build_parser()):
        assert f"[`{name}`](#histobag-{name})" in page
        assert f"{{#histobag-{name}}}" in page
