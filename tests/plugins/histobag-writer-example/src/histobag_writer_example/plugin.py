"""Hooks of the example writer pack; imports only histobag's specs (no torch, no numpy)."""

from __future__ import annotations

from histobag import BagWriterSpec, hookimpl


@hookimpl
def histobag_bag_writers() -> list[BagWriterSpec]:
    """One bag format, ``writer="npz"``; its class is imported only when it is used."""
    return [
        BagWriterSpec(
            "npz",
            "histobag_writer_example.writer:NpzBagWriter",
            description="<slide>.npz with features and top-left coords",
        )
    ]
