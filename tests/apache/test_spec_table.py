"""The spec helpers packs share (histobag.extractors.hub): tables, BibTeX files, pipelines."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from histobag.errors import PluginError
from histobag.extractors.hub import SpecTable, bibtex_entries, gated_note, pil_resize_crop
from histobag.specs import Preprocessing

ENTRY_A = "@article{one2024,\n  title = {One},\n  year = {2024}\n}"
ENTRY_B = "@misc{two2025,\n  title = {{Two}: more},\n  note = {@ not at a line start}\n}"
_PACKAGES = itertools.count()


def make_package(root: Path, monkeypatch: pytest.MonkeyPatch, bib: str | None) -> str:
    """A fresh importable package under ``root``, with ``bib`` as its citations.bib."""
    name = f"histobag_bib_test_{next(_PACKAGES)}"
    folder = root / name
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    if bib is not None:
        (folder / "citations.bib").write_text(bib, encoding="utf-8")
    monkeypatch.syspath_prepend(str(root))
    return name


def test_entries_by_key_as_written(tmp_path, monkeypatch) -> None:
    package = make_package(tmp_path, monkeypatch, f"% a comment\n\n{ENTRY_A}\n\n{ENTRY_B}\n")
    entries = bibtex_entries(package)
    assert dict(entries) == {"one2024": ENTRY_A, "two2025": ENTRY_B}
    with pytest.raises(TypeError):
        entries["three"] = "@misc{three,}"  # type: ignore[index]  # shared: read-only


@pytest.mark.parametrize(
    ("bib", "message"),
    [
        (None, "ships no citations.bib"),
        ("% nothing here\n", "holds no BibTeX entry"),
        (f"{ENTRY_A}\n\n{ENTRY_A}\n", "'one2024' twice"),
    ],
    ids=["missing", "empty", "duplicate-key"],
)
def test_bad_bib_files_are_plugin_errors(tmp_path, monkeypatch, bib, message) -> None:
    package = make_package(tmp_path, monkeypatch, bib)
    with pytest.raises(PluginError, match=message):
        bibtex_entries(package)


@pytest.fixture
def table_package(tmp_path, monkeypatch) -> str:
    return make_package(tmp_path, monkeypatch, f"{ENTRY_A}\n\n{ENTRY_B}\n")


def test_gated_row(table_package) -> None:
    table = SpecTable(table_package, "CC-BY-4.0", "https://example.org/cc", tags=("t",), gated=True)
    pre = pil_resize_crop(256, 224, interpolation="bicubic")
    spec = table.spec("my-vit.tile", "vits", "lab/vit", "one2024", 768, pre, description="A ViT")
    assert spec.factory == f"{table_package}.vits:build_my_vit_tile"
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == ("lab/vit", "pytorch_model.bin", True)
    assert spec.description == f"A ViT; {gated_note('lab/vit')}"
    assert "request access on https://huggingface.co/lab/vit" in spec.description
    assert (spec.license, spec.license_url, spec.tags) == (
        "CC-BY-4.0",
        "https://example.org/cc",
        ("t",),
    )
    assert (spec.citation, spec.num_features, spec.input_size) == (ENTRY_A, 768, 224)
    assert spec.preprocessing is pre


def test_row_fields_override_the_table(table_package) -> None:
    table = SpecTable(table_package, "MIT", "https://example.org/mit", filename="model.safetensors")
    spec = table.spec(
        "open",
        "m",
        "lab/open",
        ("one2024", "two2025"),
        None,
        Preprocessing(),
        description="Open",
        license_url=None,  # the model's Hub page
        input_size=256,
        hf_filename="weights.pth",
    )
    assert spec.description == "Open" and not spec.gated
    assert spec.license_url == "https://huggingface.co/lab/open"
    assert (spec.input_size, spec.hf_filename) == (256, "weights.pth")
    assert spec.citation == f"{ENTRY_A}\n\n{ENTRY_B}"


def test_row_without_weights_to_download(table_package) -> None:
    table = SpecTable(table_package, "Apache-2.0", gated=True)
    spec = table.spec("run", "m", None, "two2025", None, Preprocessing(), description="Yours")
    assert (spec.hf_repo, spec.hf_filename, spec.gated) == (None, None, False)
    assert (spec.description, spec.license_url) == ("Yours", "")


def test_unknown_bibtex_key_names_the_file(table_package) -> None:
    table = SpecTable(table_package, "MIT")
    with pytest.raises(PluginError, match=r"'m' cites nope2020, which .*citations.bib"):
        table.spec("m", "m", None, ("one2024", "nope2020"), 1, Preprocessing(), description="")


def test_pil_resize_crop_is_the_cards_pipeline() -> None:
    clip = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    got = pil_resize_crop(256, 224, interpolation="bicubic", mean=clip[0], std=clip[1])
    assert got == Preprocessing(
        resize=256,
        center_crop=224,
        resize_first=True,
        interpolation="bicubic",
        antialias=True,
        mean=clip[0],
        std=clip[1],
    )
    assert pil_resize_crop(224, 224, interpolation="bilinear").mean == Preprocessing().mean


def test_the_pack_ships_its_bibtex() -> None:
    entries = bibtex_entries("histobag_apache")
    assert {"rw2019timm", "vorontsov2024virchow", "oquab2024dinov2"} <= set(entries)
    assert all(text.startswith("@") for text in entries.values())
    assert all(text.count("{") == text.count("}") for text in entries.values())
