"""The "Choose a model" page's table equals ``histobag list --json`` for the installed packs."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_generator():
    """docs/hooks/generate.py, the mkdocs hook that writes the generated pages."""
    spec = importlib.util.spec_from_file_location("docs_generate", REPO / "docs/hooks/generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(markdown: str) -> list[dict[str, str]]:
    """The first pipe table of a Markdown page, as dicts keyed by its header."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").strip()) == {"-"}
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells)))
    return rows


def plain(cell: str) -> str:
    """A cell's text without Markdown code ticks or link targets."""
    cell = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", cell)
    return cell.strip("`")


def expected_row(spec: dict) -> dict[str, str]:
    """What the table should say about one ``histobag list --json`` entry."""
    if spec["kind"] == "tiles":
        model_input = f"{spec['input_size']} px tiles"
    else:
        model_input = f"{spec['tile_encoder']} features"
    key = re.match(r"\s*@\w+\s*\{\s*([^,\s]+)\s*,", spec["citation"] or "")
    return {
        "name": spec["name"],
        "kind": spec["kind"],
        "pack": spec["distribution"],
        "licence": spec["license"],
        "dims": "depends on args" if spec["num_features"] is None else str(spec["num_features"]),
        "input": model_input,
        "gated": "yes" if spec["gated"] else "no",
        "citation": key.group(1) if key else ("cite" if spec["citation"] else ""),
    }


@pytest.fixture(scope="module")
def cli_specs() -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "histobag", "list", "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def test_table_equals_cli_json(cli_specs):
    page = load_generator().model_table_markdown()
    rows = [{k: plain(v) for k, v in row.items()} for row in table_rows(page)]
    assert cli_specs, "no extractors installed: the packs are part of the test environment"
    assert rows == [expected_row(spec) for spec in cli_specs]


def test_every_citation_is_on_the_page(cli_specs):
    page = load_generator().model_table_markdown()
    for spec in cli_specs:
        if spec["citation"]:
            assert f'<a id="cite-{spec["name"]}"></a>' in page
            assert spec["citation"].strip() in page


def test_licence_links_to_its_terms(cli_specs):
    rows = table_rows(load_generator().model_table_markdown())
    for row, spec in zip(rows, cli_specs):
        if spec["license_url"]:
            assert row["licence"] == f"[{spec['license']}]({spec['license_url']})"
