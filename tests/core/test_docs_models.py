"""``docs/models.md`` against the registry: every named pathology model has a row, and the row's
pack, licence, feature count, input size and gated flag are what the installed packs say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import histobag

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"
HEADER = (
    "| model | pack | licence | features | input | gated | weights (Hugging Face) | "
    "default preprocessing | citation | parity verified against (max abs diff, fp32) |"
)


def _rows() -> dict[str, list[str]]:
    """Model name → the cells of its row in the pathology table."""
    lines = DOC.read_text().splitlines()
    start = lines.index(HEADER) + 2
    rows: dict[str, list[str]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        for position, name in enumerate(re.findall(r"`([^`]+)`", cells[0])):
            rows[name] = [*cells, str(position)]
    return rows


ROWS = _rows()
#: Named models documented elsewhere on the page (ImageNet, your own checkpoints) or examples.
ELSEWHERE = {"dinov2", "simclr", "example-colorstats"}


def _pathology_models() -> list[str]:
    return [
        name
        for name in histobag.list_extractors()
        if not name.endswith("_imagenet") and name not in ELSEWHERE
    ]


def test_every_named_pathology_model_has_a_row():
    assert sorted(set(_pathology_models()) - set(ROWS)) == []


@pytest.mark.parametrize("name", sorted(ROWS))
def test_a_row_says_what_the_registry_says(name):
    info = histobag.extractor_info(name)
    _, pack, licence, features, size, gated, *_, position = ROWS[name]
    assert pack == info.pack
    assert licence.split(" ")[0] == info.license
    assert features.split(" / ")[int(position)] == str(info.num_features)
    if info.kind == "tiles":
        assert f"{info.input_size} px" in size.split(" / ")
    assert gated == ("yes" if info.gated else "no")
