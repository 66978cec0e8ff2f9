"""Slide readers: the libraries that open slide formats, as plugins.

Readers are registered through the ``histobag_slide_readers`` hook (core registers
``openslide``); :func:`open_reader` picks one for a path or URL. See
:class:`SlideReader` for what a reader provides.
"""

from histobag.slide.readers.base import SlideReader, white_outside
from histobag.slide.readers.select import (
    AUTO,
    as_source,
    candidates,
    is_url,
    open_reader,
    reader_names,
    source_stem,
)

__all__ = [
    "AUTO",
    "SlideReader",
    "as_source",
    "candidates",
    "is_url",
    "open_reader",
    "reader_names",
    "source_stem",
    "white_outside",
]
