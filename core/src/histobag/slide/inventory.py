"""What is in a folder of slides: each slide's reader, size, levels and resolution, or why
it does not open (``histobag slides DIR``), and thumbnails with their tissue masks."""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histobag.errors import HistobagError
from histobag.files import write_bytes_atomic
from histobag.naming import safe_name
from histobag.plugins import slide_reader_specs
from histobag.slide.readers.select import AUTO, decode_problem, open_reader
from histobag.slide.tissue import DEFAULT_TISSUE_DETECTOR
from histobag.slide.wsi import WSI

#: Suffixes OpenSlide opens (a folder scan looks for these and every reader's own).
OPENSLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
)


def slide_suffixes(*, dicom: bool = False) -> tuple[str, ...]:
    """Suffixes of slide files and folders: OpenSlide's and every registered reader's (e.g.
    ``.czi``, ``.zarr``, ``.png`` when their readers are installed); ``.dcm`` too with
    ``dicom`` (a DICOM slide is several files, so datasets leave them out)."""
    found = set(OPENSLIDE_SUFFIXES) | {
        s for spec in slide_reader_specs().values() for s in spec.suffixes
    }
    return tuple(sorted(found | ({".dcm"} if dicom else set())))


def is_dicom_folder(folder: Path) -> bool:
    """Whether ``folder`` holds one DICOM WSI: only ``.dcm`` files (at least one), no
    sub-folders (hidden files aside)."""
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    return bool(entries) and all(e.is_file() and e.suffix.lower() == ".dcm" for e in entries)


def walk_slides(
    folder: str | os.PathLike[str], suffixes: tuple[str, ...], *, dicom_folders: bool = False
) -> list[Path]:
    """Files and folders (OME-Zarr, ...) under ``folder`` named like slides, sorted; a slide
    folder is not searched further. With ``dicom_folders``, a sub-folder holding only
    ``.dcm`` files is one slide (a DICOM WSI is a folder of files, one per level)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        for name in list(dirs):
            if name.lower().endswith(suffixes) or (dicom_folders and is_dicom_folder(base / name)):
                found.append(base / name)
                dirs.remove(name)
        found += [base / name for name in files if name.lower().endswith(suffixes)]
    return sorted(found)


@dataclass(frozen=True)
class SlideInfo:
    """One slide as its reader sees it, or why it does not open.

    Attributes:
        path: The slide's path or URL.
        reader: The reader that opened it (None if none could).
        version: That reader's library version.
        dimensions: Level-0 ``(width, height)``.
        levels: Number of pyramid levels.
        mpp: Level-0 µm per pixel the file records (None: not recorded).
        magnification: Objective magnification the file records.
        vendor: Scanner vendor or format.
        error: Why it does not open (None if it does).
    """

    path: str
    reader: str | None = None
    version: str = ""
    dimensions: tuple[int, int] | None = None
    levels: int = 0
    mpp: float | None = None
    magnification: float | None = None
    vendor: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether a reader opened it."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = asdict(self)
        out["dimensions"] = list(self.dimensions) if self.dimensions else None
        return out


def inspect_slide(source: str | os.PathLike[str], reader: str = AUTO) -> SlideInfo:
    """Open ``source`` (a quick look: metadata only, no pixels) and describe it."""
    source = os.fspath(source)
    try:
        name, slide = open_reader(source, reader)
    except HistobagError as exc:
        return SlideInfo(source, error=str(exc))
    try:
        problem = decode_problem(slide)  # a file can open and still fail to decode
        if problem is not None:
            return SlideInfo(
                source,
                reader=name,
                version=slide.version,
                error=f"opens with {name}, but its pixels cannot be read: {problem}",
            )
        return SlideInfo(
            source,
            reader=name,
            version=slide.version,
            dimensions=tuple(slide.dimensions),  # type: ignore[arg-type]
            levels=len(slide.level_dimensions),
            mpp=slide.mpp,
            magnification=slide.magnification,
            vendor=slide.vendor,
        )
    finally:
        slide.close()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_thumbnails(
    source: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    reader: str = AUTO,
    tissue: Any = DEFAULT_TISSUE_DETECTOR,
    mpp: float | None = None,
    width: int = 1024,
) -> list[Path]:
    """Write ``<name>.thumbnail.png`` and ``<name>.tissue.png`` (the thumbnail with what the
    tissue detector drops darkened) into ``outdir``.

    Raises:
        HistobagError: The slide does not open, or records no mpp and none was given.
    """
    wsi = WSI(source, 64, 128, reader=reader, tissue=tissue, mpp=mpp)
    try:
        thumbnail = wsi.thumbnail(width)
        name = safe_name(wsi.name)
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        paths = [write_bytes_atomic(outdir / f"{name}.thumbnail.png", _png(thumbnail))]
        if wsi.tissue_mask is not None:
            mask = Image.fromarray(wsi.tissue_mask.astype(np.uint8) * 255)
            mask = np.asarray(mask.resize(thumbnail.size, Image.Resampling.NEAREST)) > 0
            rgb = np.asarray(thumbnail).astype(np.float32)
            rgb[~mask] *= 0.35  # dropped: dark; kept: as scanned
            overlay = Image.fromarray(rgb.astype(np.uint8))
            paths.append(write_bytes_atomic(outdir / f"{name}.tissue.png", _png(overlay)))
        return paths
    finally:
        wsi.close()
