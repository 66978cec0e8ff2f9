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


SLIDE_HEADER = (
    "| model | pack | licence | features | tile encoder | tiles | gated | "
    "weights (Hugging Face) | citation | parity verified against (max abs diff, fp32) |"
)


def _rows(header: str = HEADER) -> dict[str, list[str]]:
    """Model name → the cells of its row in the table under ``header``."""
    lines = DOC.read_text().splitlines()
    start = lines.index(header) + 2
    rows: dict[str, list[str]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        for position, name in enumerate(re.findall(r"`([^`]+)`", cells[0])):
            rows[name] = [*cells, str(position)]
    return rows


ROWS = _rows()
SLIDE_ROWS = _rows(SLIDE_HEADER)
#: Named models documented elsewhere on the page (ImageNet, your own checkpoints) or examples.
ELSEWHERE = {"dinov2", "simclr", "example-colorstats"}


def _pathology_models() -> list[str]:
    return [
        name
        for name in histobag.list_extractors()
        if not name.endswith("_imagenet") and name not in ELSEWHERE
    ]


def test_every_named_pathology_model_has_a_row():
    assert sorted(set(_pathology_models()) - set(ROWS) - set(SLIDE_ROWS)) == []


def test_slide_encoders_are_in_their_own_table():
    slide_encoders = set(histobag.list_extractors(kind="tile_features"))
    assert slide_encoders == set(SLIDE_ROWS)
    assert not slide_encoders & set(ROWS)


@pytest.mark.parametrize("name", sorted(SLIDE_ROWS))
def test_a_slide_encoder_row_says_what_it_needs(name):
    info = histobag.extractor_info(name)
    _, pack, licence, features, tile_encoder, tiles, gated, *_ = SLIDE_ROWS[name]
    assert (pack, licence.split(" ")[0], features) == (
        info.pack,
        info.license,
        str(info.num_features),
    )
    needs = info.slide_input
    assert re.findall(r"`([^`]+)`", tile_encoder) == list(needs.tile_encoders)
    assert tiles == f"{needs.tile_px} px at {needs.magnification:g}x"
    assert gated == ("yes" if info.gated else "no")


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
