"""Module paths renamed in 0.3 that the docs used stay importable, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys

import pytest

RENAMED = {
    "histobag.data": ("histobag.slide.samples", ["sample_slide"]),
    "histobag.models": ("histobag.extractors.saved", ["save_model", "is_saved_model"]),
    "histobag.integrity": ("histobag.bags.manifest", ["verify_bags", "read_manifest"]),
    "histobag.io.bags": ("histobag.bags.read", ["read_bag", "rebuild_extractor"]),
}


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_old_module_path_warns_and_gives_the_same_objects(old, monkeypatch):
    new, names = RENAMED[old]
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    current = importlib.import_module(new)
    for name in names:
        assert getattr(module, name) is getattr(current, name)


def test_old_bag_writer_names_are_the_new_classes(monkeypatch):
    monkeypatch.delitem(sys.modules, "histobag.io.bags", raising=False)
    with pytest.warns(DeprecationWarning, match=r"histobag\.io\.bag_writers"):
        old = importlib.import_module("histobag.io.bags")
    from histobag.io import bag_writers

    assert old.BagWriter is bag_writers.BagWriter
    assert old.PtBagWriter is bag_writers.PtBagWriter
