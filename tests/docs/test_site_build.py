"""The documentation site builds with ``mkdocs build --strict``, and its generated pages say
what the installed code says (rendered HTML, not just the Markdown the hook writes)."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from histobag.cli import build_parser

from .test_api_reference import runtime_packages
from .test_cli_reference import subparsers

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-4000:]}"
    return out


def text(cell: str) -> str:
    """The text of an HTML fragment."""
    return html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()


def test_api_reference_renders_exactly_the_public_names(site):
    for package, names in runtime_packages().items():
        page = (site / "reference" / package / "index.html").read_text(encoding="utf-8")
        rendered = re.findall(r'<h2 id="([^"]+)"', page)
        assert sorted(rendered) == sorted(f"{package}.{name}" for name in names), package


def test_reference_index_links_every_package(site):
    page = (site / "reference" / "index.html").read_text(encoding="utf-8")
    for package in runtime_packages():
        assert f'href="{package}/"' in page


def test_model_table_equals_cli_json(site):
    specs = json.loads(
        subprocess.run(
            [sys.executable, "-m", "histobag", "list", "--json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    page = (site / "choose_a_model" / "index.html").read_text(encoding="utf-8")
    table = re.search(r"<table>(.*?)</table>", page, flags=re.DOTALL).group(1)
    header = [text(c) for c in re.findall(r"<th[^>]*>(.*?)</th>", table, flags=re.DOTALL)]
    rows = [
        dict(zip(header, (text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL))))
        for row in re.findall(r"<tr>(.*?)</tr>", table, flags=re.DOTALL)[1:]
    ]
    assert [r["name"] for r in rows] == [s["name"] for s in specs]
    for row, spec in zip(rows, specs):
        assert row["pack"] == spec["distribution"]
        assert row["licence"] == spec["license"]
        assert row["gated"] == ("yes" if spec["gated"] else "no")
        if spec["num_features"] is not None:
            assert row["dims"] == str(spec["num_features"])


def test_cli_reference_has_a_section_per_subcommand(site):
    page = (site / "cli" / "index.html").read_text(encoding="utf-8")
    sections = re.findall(r'<h2 id="histobag-([^"]+)"', page)
    assert sections == list(subparsers(build_parser()))


def test_start_page_shows_pictures_that_are_in_the_site(site):
    page = (site / "index.html").read_text(encoding="utf-8")
    pictures = [s for s in re.findall(r'<img[^>]*\ssrc="([^"]+)"', page) if "://" not in s]
    assert pictures, "the start page shows no picture (the demo's UMAP and mosaic)"
    for picture in pictures:
        assert (site / picture).is_file(), picture
