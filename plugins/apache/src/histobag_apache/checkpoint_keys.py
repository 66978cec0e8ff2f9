"""Key names of your own training checkpoints, shared by the ``dinov2`` and ``simclr`` loaders."""

from __future__ import annotations


def strip_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    """Remove any sequence of ``prefixes`` from the start of ``key``, in any order and nesting
    (``module.backbone.module.x`` → ``x``), as DDP and training wrappers leave them."""
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key
