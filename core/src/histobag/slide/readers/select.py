"""Which reader opens a slide: ``reader="auto"`` (the first that can) or a registered name."""

from __future__ import annotations

import os
import re
from pathlib import Path

from histobag.errors import SlideOpenError
from histobag.plugins import slide_reader_specs
from histobag.slide.errors import TileSettingsError
from histobag.slide.readers.base import SlideReader
from histobag.specs import SlideReaderSpec

AUTO = "auto"
"""``reader=`` value that picks the reader from the file."""


#: A URL scheme (RFC 3986), such as ``https`` or ``dicomweb+https``.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")

#: A DICOM UID (dotted digits): the last part of a DICOMweb series URL.
DICOM_UID = re.compile(r"[0-9]+(?:\.[0-9]+)+")


def is_url(source: str) -> bool:
    """Whether ``source`` is a URL (``scheme://...``) rather than a local path."""
    scheme = source.split("://", 1)[0] if "://" in source else ""
    return bool(_SCHEME.fullmatch(scheme)) and scheme.lower() != "file"


def source_stem(source: str | os.PathLike[str]) -> str:
    """A slide's name from its path or URL: the last path part without its suffix (a URL
    ending in a DICOM UID, a DICOMweb series, keeps the whole UID: its dots are no suffix)."""
    text = os.fspath(source)
    name = Path(text.split("?", 1)[0].rstrip("/")).name
    return name if is_url(text) and DICOM_UID.fullmatch(name) else Path(name).stem


def as_source(source: str | os.PathLike[str]) -> str | Path:
    """A local path as a :class:`~pathlib.Path`; a URL stays a string (a Path would fold its
    ``//``)."""
    text = os.fspath(source)
    return text if is_url(text) else Path(text)


def reader_names() -> list[str]:
    """Registered slide readers, by name."""
    return sorted(slide_reader_specs())


def candidates(source: str) -> list[SlideReaderSpec]:
    """Readers that ``reader="auto"`` tries for ``source``: those that claim it by suffix or
    URL scheme (opt-in readers aside), highest priority first (then by name); a reader that
    names no suffix claims every local file, after the others."""
    specs = [spec for spec in slide_reader_specs().values() if spec.auto and spec.claims(source)]
    return sorted(specs, key=lambda s: (-s.priority, not s.suffixes, s.name))


def decode_problem(reader: SlideReader) -> str | None:
    """Why ``reader`` cannot decode its slide (a small read of its smallest level), or None.

    A fallback reader can parse a file's header where the format's own library refused it
    (an unknown compression, say); decoding tells the two apart.
    """
    level = len(reader.level_dimensions) - 1
    width, height = reader.level_dimensions[level]
    try:
        reader.read_region((0, 0), level, (max(1, min(width, 64)), max(1, min(height, 64))))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def open_reader(source: str, reader: str = AUTO) -> tuple[str, SlideReader]:
    """Open ``source`` with ``reader`` (a registered name) or, for ``"auto"``, with the first
    reader that claims it, opens it and decodes a small region of it.

    Returns:
        ``(name of the reader used, the open reader)``.

    Raises:
        TileSettingsError: ``reader`` is not a registered reader.
        SlideOpenError: No reader could open ``source``; the message says what each said.
    """
    specs = slide_reader_specs()
    if reader != AUTO:
        if reader not in specs:
            raise TileSettingsError(
                f"Unknown slide reader {reader!r}; installed: {', '.join(sorted(specs))} (or "
                "'auto'). A reader pack registers more (see `histobag slides --readers`)."
            )
        chosen = [specs[reader]]
    else:
        chosen = candidates(source)
    if not chosen:
        raise SlideOpenError(
            f"No installed slide reader opens {source}: none handles its suffix or URL scheme "
            f"(installed: {', '.join(sorted(specs))}). Install a reader pack for this format."
        )
    failures = []
    for spec in chosen:
        try:
            opened = spec.load()(source)
        except SlideOpenError as exc:
            failures.append((spec.name, str(exc)))
            continue
        except Exception as exc:  # a reader's library may raise anything on a foreign file
            failures.append((spec.name, f"{type(exc).__name__}: {exc}"))
            continue
        if reader != AUTO:
            return spec.name, opened
        problem = decode_problem(opened)
        if problem is None:
            return spec.name, opened
        opened.close()  # opens, but cannot decode: the next reader may
        failures.append((spec.name, f"opens, but its pixels cannot be read: {problem}"))
    if len(failures) == 1:
        raise SlideOpenError(failures[0][1])
    said = "; ".join(f"{name}: {why}" for name, why in failures)
    raise SlideOpenError(f"No slide reader could open {source} ({said}).")
