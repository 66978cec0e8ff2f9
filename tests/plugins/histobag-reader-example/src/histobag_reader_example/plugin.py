"""Hooks of the example reader pack; imports only histobag's specs (no numpy)."""

from __future__ import annotations

from histobag import hookimpl
from histobag.specs import SlideReaderSpec


@hookimpl
def histobag_slide_readers() -> list[SlideReaderSpec]:
    """One reader for ``.npyslide`` files; its class is imported only when a slide is opened."""
    return [
        SlideReaderSpec(
            "npyslide",  # what users pass as reader="npyslide"
            "histobag_reader_example.reader:NpySlideReader",
            suffixes=(".npyslide",),
            priority=10,  # before OpenSlide, which claims every local file
            license="MIT",
            description="NumPy .npz pyramid of uint8 RGB levels with an mpp (.npyslide)",
        )
    ]
