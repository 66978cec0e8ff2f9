"""Bag folders: making them (:func:`generate_feature_bags`), their configuration, reading them
back, and checking them.

- :mod:`histobag.bags.generate`: one bag per slide of a dataset, resumable, with a run report;
- :mod:`histobag.bags.config`: ``bags_config.json`` (fingerprint, provenance, rebuilding);
- :mod:`histobag.bags.read`: :func:`read_bag`, :func:`rebuild_extractor`;
- :mod:`histobag.bags.manifest`: ``bags_manifest.json`` and ``histobag verify``;
- :mod:`histobag.bags.space`: the free-space estimate made before a run.

Importing this package imports no torch; the functions load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from histobag.bags.generate import BagRunReport, generate_feature_bags
    from histobag.bags.manifest import verify_bags
    from histobag.bags.read import read_bag, rebuild_extractor

# Public name -> submodule defining it; loaded on first access (the generator imports torch).
_LAZY = {
    "BagRunReport": "histobag.bags.generate",
    "generate_feature_bags": "histobag.bags.generate",
    "read_bag": "histobag.bags.read",
    "rebuild_extractor": "histobag.bags.read",
    "verify_bags": "histobag.bags.manifest",
}

__all__ = ["BagRunReport", "generate_feature_bags", "read_bag", "rebuild_extractor", "verify_bags"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'histobag.bags' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
