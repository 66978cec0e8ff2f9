"""``Dataset``: a set of slides, their annotations and one tile size (slideflow-like)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histobag import validation
from histobag.errors import ConfigError
from histobag.io.tfrecord import TFRecordReader
from histobag.naming import safe_name
from histobag.plugins import slide_reader_specs
from histobag.slide import WSI
from histobag.slide.errors import TileSettingsError
from histobag.slide.inventory import OPENSLIDE_SUFFIXES, slide_suffixes, walk_slides
from histobag.slide.readers import AUTO, as_source, source_stem
from histobag.slide.roi import find_roi_file
from histobag.slide.tissue import DEFAULT_TISSUE_DETECTOR, tissue_record

if TYPE_CHECKING:
    import pandas as pd

    from histobag.bags.generate import BagRunReport
    from histobag.slide.magnification import TileUm

__all__ = ["SLIDE_SUFFIXES", "Dataset", "ExtractionSummary", "find_slides"]

logger = logging.getLogger(__name__)


#: File suffixes OpenSlide opens; a folder scan also takes every registered reader's (DICOM is
#: left out: one slide is several .dcm files; pass its level-0 file explicitly).
SLIDE_SUFFIXES = OPENSLIDE_SUFFIXES

Filters = Mapping[str, Any]


def find_slides(slides: str | Path | Iterable[str | Path]) -> dict[str, Path]:
    """Map slide name (file stem) to path, from a folder (searched recursively) or a list.

    Raises:
        ConfigError: The folder is missing, or two files share a name.
    """
    if isinstance(slides, str | Path):
        folder = validation.check_slide_folder(slides, name="slides=", error=ConfigError)
        dicom = "dicom" in slide_reader_specs()  # a folder of .dcm files is one slide
        paths = walk_slides(folder, slide_suffixes(), dicom_folders=dicom)
    else:  # URLs (https://, s3://...) stay strings: a Path would fold their "//"
        paths = [as_source(p) for p in slides]
    found: dict[str, Path] = {}
    for path in paths:
        stem = source_stem(path)
        if stem in found:
            raise ConfigError(
                f"Two slides are named {stem!r}: {found[stem]} and {path}. Slide "
                "names (file stems) must be unique; rename one of them."
            )
        found[stem] = path  # type: ignore[assignment]
    return found


def _load_annotations(annotations: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Annotations as strings ('' for blanks), one row per slide, indexed by slide name."""
    import pandas as pd

    if isinstance(annotations, pd.DataFrame):
        df = annotations.copy()
        df.columns = [str(c).strip() for c in df.columns]
        df = df.astype(object).where(df.notna(), "").astype(str)
    else:
        path = Path(annotations)
        if not path.is_file():
            what = "is a folder, not a CSV file" if path.is_dir() else "does not exist"
            raise ConfigError(f"Annotations file {path} {what}. Check annotations=.")
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
            raise ConfigError(f"Cannot read annotations {path} as CSV: {exc}.") from None
        df.columns = [str(c).strip() for c in df.columns]
    if "slide" not in df.columns:
        raise ConfigError(
            f"Annotations need a 'slide' column with slide names (file stems); found columns "
            f"{list(df.columns)}."
        )
    df["slide"] = df["slide"].astype(str).str.strip()
    df = df[df["slide"] != ""]
    duplicated = sorted(set(df["slide"][df["slide"].duplicated()]))
    if duplicated:
        raise ConfigError(
            f"Annotations list these slides more than once: {duplicated[:5]}. Keep one row per "
            "slide."
        )
    return df.set_index("slide", drop=False)


@dataclass
class ExtractionSummary:
    """What :meth:`Dataset.extract_tiles` did.

    Attributes:
        written: Slide name -> TFRecord path, for slides extracted now.
        skipped: Slide name -> existing TFRecord path, for slides skipped as already done.
        failed: Slide name -> error message, for slides that could not be extracted.
        num_tiles: Slide name -> tiles in its TFRecord.
    """

    written: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    num_tiles: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"{len(self.written)} slides extracted, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed"
        ]
        lines += [f"  {name}: {message}" for name, message in self.failed.items()]
        return "\n".join(lines)


class Dataset:
    """Slides, their annotations and one tile size; filter it, label it, extract its tiles.

    Slide names are file stems. With annotations (a CSV or DataFrame with a ``slide`` column
    and any outcome columns), the dataset holds the annotated slides, restricted to those with a
    file when ``slides`` is given; without annotations it holds every slide found.

    Args:
        slides: A folder (searched recursively for slide files) or a list of slide paths.
        annotations: A CSV path or a DataFrame with a ``slide`` column.
        tile_px: Tile side in pixels.
        tile_um: Tile side in µm, or a magnification such as ``"20x"``.
        filters: ``{column: [values]}``: keep slides whose annotation is one of the values
            (compared as strings, as read from a CSV).
        filter_blank: Columns that must not be blank.
        tfrecords: Folder of ``<slide>.tfrecords`` files for this tile size.
        roi: Folder of ROI files ``<slide>.geojson`` / ``.json`` / ``.csv``.
        tissue: Tissue detection on each slide's thumbnail: a registered detector's name
            (``"hsv"``, the default; ``"otsu"``; ``histobag slides`` shows masks), ``{"name":
            ..., "kwargs": {...}}``, or ``None`` to keep every grid tile that passes the pixel
            filters (grayspace and whitespace). Recorded in ``bags_config.json``.
        mpp: Level-0 microns per pixel for every slide, overriding (or standing in for) what
            each slide records; for scans that record none. ``None`` reads it from each slide.
        reader: The slide reader: ``"auto"`` (per slide, the first registered reader that
            opens it) or a reader's name. Recorded in ``bags_config.json``.

    Raises:
        TileSettingsError: ``tile_px`` or ``tile_um`` is out of range (see
            :mod:`histobag.validation`: 8 to 16384 px; a positive number of µm or ``"20x"``).
        ConfigError: ``slides`` is a file or a missing folder, the annotations cannot be read,
            or slide names clash.

    Example:
        >>> ds = Dataset("slides/", "annotations.csv", 256, "20x",  # doctest: +SKIP
        ...              filters={"site": ["A", "B"]}, tfrecords="tfrecords/256px_20x")
        >>> labels, unique = ds.labels("subtype")  # doctest: +SKIP
    """

    def __init__(
        self,
        slides: str | Path | Iterable[str | Path] | None = None,
        annotations: str | Path | pd.DataFrame | None = None,
        tile_px: int | None = None,
        tile_um: TileUm | None = None,
        *,
        filters: Filters | None = None,
        filter_blank: str | Sequence[str] | None = None,
        tfrecords: str | Path | None = None,
        roi: str | Path | None = None,
        tissue: str | dict[str, Any] | None = DEFAULT_TISSUE_DETECTOR,
        mpp: float | None = None,
        reader: str = AUTO,
    ) -> None:
        if tile_px is not None or tile_um is not None:  # validate early
            if tile_px is not None:
                tile_px = validation.check_tile_px(tile_px, error=TileSettingsError)
            if tile_um is not None:  # "128" (as typed on a command line) becomes 128.0
                tile_um = validation.check_tile_um(tile_um, error=TileSettingsError)
            if tile_px is not None and tile_um is not None:
                validation.check_tile_size(tile_px, tile_um, error=TileSettingsError)
        self.tile_px = tile_px
        self.tile_um = tile_um
        self._slide_files = find_slides(slides) if slides is not None else None
        self._annotations = _load_annotations(annotations) if annotations is not None else None
        self.filters: dict[str, list[str]] = {}
        self.filter_blank: list[str] = []
        self._add_filters(filters, filter_blank)
        self.tfrecords_dir = Path(tfrecords) if tfrecords is not None else None
        self.roi_dir = Path(roi) if roi is not None else None
        # An unknown detector fails here, not per slide; the record goes to bags_config.json.
        self.tissue_record = tissue_record(tissue)
        self.tissue = tissue
        self.mpp = None if mpp is None else validation.check_mpp(mpp, error=TileSettingsError)
        if reader != AUTO:
            validation.check_choice("reader", reader, tuple(slide_reader_specs()))
        self.reader = reader
        if self.roi_dir is not None and not self.roi_dir.is_dir():
            what = "is a file, not a folder" if self.roi_dir.is_file() else "does not exist"
            raise ConfigError(f"ROI folder {self.roi_dir} {what}. Check roi=.")
        self._check_names()

    def _add_filters(
        self, filters: Filters | None, filter_blank: str | Sequence[str] | None
    ) -> None:
        for column, values in (filters or {}).items():
            if isinstance(values, str) or not isinstance(values, Iterable):
                values = [values]
            self.filters[str(column)] = [str(v) for v in values]
        if isinstance(filter_blank, str):
            filter_blank = [filter_blank]
        for column in filter_blank or []:
            if column not in self.filter_blank:
                self.filter_blank.append(str(column))
        if (self.filters or self.filter_blank) and self._annotations is None:
            raise ConfigError("filters= and filter_blank= need annotations; pass annotations=.")
        if self._annotations is not None:
            for column in [*self.filters, *self.filter_blank]:
                self._require_column(column)

    def _require_column(self, column: str) -> None:
        assert self._annotations is not None
        if column not in self._annotations.columns:
            raise ConfigError(
                f"The annotations have no column {column!r}; columns are "
                f"{list(self._annotations.columns)}."
            )

    def _check_names(self) -> None:
        # Two names that sanitise to one file name would overwrite each other's outputs.
        seen: dict[str, str] = {}
        for name in self.slides():
            stem = safe_name(name)
            if stem in seen:
                raise ConfigError(
                    f"Slides {seen[stem]!r} and {name!r} would share the output name {stem!r}; "
                    "rename one of them."
                )
            seen[stem] = name

    # ---------------------------------------------------------------- selection

    @property
    def annotations(self) -> pd.DataFrame | None:
        """The annotation rows of the dataset's slides (after filters), or None."""
        if self._annotations is None:
            return None
        return self._annotations.loc[self.slides()].reset_index(drop=True)

    def slides(self) -> list[str]:
        """Sorted names of the slides in the dataset, after filters."""
        if self._annotations is None:
            return sorted(self._slide_files or {})
        df = self._annotations
        keep = df["slide"] != ""
        for column, values in self.filters.items():
            keep &= df[column].isin(values)
        for column in self.filter_blank:
            keep &= df[column].str.strip() != ""
        names = set(df["slide"][keep])
        if self._slide_files is not None:
            missing = names - set(self._slide_files)
            if missing:
                logger.debug("%d annotated slides have no slide file", len(missing))
            names &= set(self._slide_files)
        return sorted(names)

    def slide_paths(self) -> list[Path]:
        """Paths of the dataset's slides that have a file, in :meth:`slides` order."""
        files = self._slide_files or {}
        return [files[name] for name in self.slides() if name in files]

    def tfrecords(self) -> list[Path]:
        """Existing ``<tfrecords>/<safe name>.tfrecords`` of the dataset's slides."""
        if self.tfrecords_dir is None:
            return []
        paths = (self.tfrecords_dir / f"{safe_name(name)}.tfrecords" for name in self.slides())
        return [p for p in paths if p.is_file()]

    def roi_file(self, slide: str) -> Path | None:
        """Return the ROI file of ``slide`` in the ROI folder, if any."""
        if self.roi_dir is None:
            return None
        return find_roi_file(self.roi_dir, slide)

    def filter(
        self,
        filters: Filters | None = None,
        filter_blank: str | Sequence[str] | None = None,
    ) -> Dataset:
        """Return a new dataset with these filters added (a column filtered again is replaced)."""
        clone = object.__new__(Dataset)
        clone.__dict__.update(self.__dict__)
        clone.filters = dict(self.filters)
        clone.filter_blank = list(self.filter_blank)
        clone._add_filters(filters, filter_blank)
        return clone

    def __len__(self) -> int:
        """Return the number of slides."""
        return len(self.slides())

    def __repr__(self) -> str:
        return (
            f"Dataset(slides={len(self)}, tile_px={self.tile_px}, tile_um={self.tile_um!r}, "
            f"filters={self.filters}, filter_blank={self.filter_blank})"
        )

    # ---------------------------------------------------------------- labels

    def labels(
        self, outcome: str | Sequence[str], use_float: bool = False
    ) -> tuple[dict[str, Any], list[Any] | dict[str, list[Any]]]:
        """Labels of every slide for one or more outcome columns, as slideflow returns them.

        Categorical (default): each value becomes its index into the sorted unique values.
        ``use_float``: values are converted to float.

        Args:
            outcome: A column name, or a list of them.
            use_float: Float labels instead of category indices.

        Returns:
            ``(labels, unique)``. For one outcome, ``labels`` maps slide -> label and ``unique``
            is the sorted list of unique values; for several, each slide maps to a list of labels
            and ``unique`` maps outcome -> sorted unique values.

        Raises:
            ConfigError: No annotations, an unknown column, a blank value, or a non-numeric
                value with ``use_float``.
        """
        if self._annotations is None:
            raise ConfigError("labels() needs annotations; pass annotations= to the Dataset.")
        outcomes = [outcome] if isinstance(outcome, str) else list(outcome)
        slides = self.slides()
        per_outcome: dict[str, dict[str, Any]] = {}
        uniques: dict[str, list[Any]] = {}
        for name in outcomes:
            self._require_column(name)
            values = self._annotations.loc[slides, name].str.strip()
            blank = sorted(values.index[values == ""])
            if blank:
                raise ConfigError(
                    f"Slides {blank[:5]} have no value for {name!r}; drop them with "
                    f"filter_blank=[{name!r}]."
                )
            if use_float:
                try:
                    floats = {s: float(v) for s, v in values.items()}
                except ValueError as exc:
                    raise ConfigError(
                        f"Column {name!r} has a non-numeric value ({exc}); use categorical "
                        "labels (use_float=False) or fix the annotations."
                    ) from None
                per_outcome[name] = floats
                uniques[name] = sorted(set(floats.values()))
            else:
                unique = sorted(set(values))
                index = {v: i for i, v in enumerate(unique)}
                per_outcome[name] = {s: index[v] for s, v in values.items()}
                uniques[name] = unique
        if len(outcomes) == 1:
            return per_outcome[outcomes[0]], uniques[outcomes[0]]
        labels = {s: [per_outcome[name][s] for name in outcomes] for s in slides}
        return labels, uniques

    # ---------------------------------------------------------------- slides and tiles

    def _tile_settings(self) -> tuple[int, TileUm]:
        if self.tile_px is None or self.tile_um is None:
            raise ConfigError("This dataset has no tile size; pass tile_px= and tile_um=.")
        return self.tile_px, self.tile_um

    def wsi(self, slide: str, **kwargs: Any) -> WSI:
        """Open ``slide`` as a :class:`~histobag.slide.WSI` with the dataset's tile settings.

        Keyword arguments go to :class:`~histobag.slide.WSI` (e.g. ``stride_div``, ``mpp``);
        the slide's ROI file is used unless ``roi=`` is given.
        """
        tile_px, tile_um = self._tile_settings()
        path = (self._slide_files or {}).get(slide)
        if path is None:
            raise ConfigError(
                f"No slide file for {slide!r} in this dataset; check slides= and the filters."
            )
        kwargs.setdefault("roi", self.roi_file(slide))
        kwargs.setdefault("tissue", self.tissue)
        kwargs.setdefault("reader", self.reader)
        if self.mpp is not None:
            kwargs.setdefault("mpp", self.mpp)
        return WSI(path, tile_px, tile_um, **kwargs)

    def wsi_kwargs(self, slide: str) -> dict[str, Any]:
        """Per-slide keyword arguments for :class:`~histobag.slide.WSI`: its ROI file, the
        dataset's tissue detection and its mpp override."""
        roi = self.roi_file(slide)
        kwargs: dict[str, Any] = {"tissue": self.tissue, "reader": self.reader}
        kwargs |= {"mpp": self.mpp} if self.mpp is not None else {}
        return kwargs | ({"roi": str(roi)} if roi is not None else {})

    def generate_feature_bags(
        self, extractor: Any, outdir: str | Path, **kwargs: Any
    ) -> BagRunReport:
        """Write one feature bag per slide into ``outdir``.

        ``extractor`` is a registered name or a built extractor; keyword arguments are those of
        :func:`histobag.bags.generate_feature_bags` (``normalizer``, ``writer``,
        ``batch_size``, ``num_workers``, ``min_tiles``, ``max_tiles``, ``overwrite``...).
        """
        # Deferred: the bag generator imports the engine and torch; listing slides needs neither.
        from histobag.bags.generate import generate_feature_bags

        self._tile_settings()
        return generate_feature_bags(extractor, self, outdir, **kwargs)

    def extract_tiles(
        self,
        outdir: str | Path | None = None,
        img_format: str = "jpg",
        quality: int = 95,
        *,
        skip_existing: bool = False,
        progress: bool = True,
        **wsi_kwargs: Any,
    ) -> ExtractionSummary:
        """Extract every slide's tiles into ``<outdir>/<safe name>.tfrecords``.

        A slide that fails is recorded in the summary's ``failed`` with its error, and the
        others go on.

        Args:
            outdir: Output folder; defaults to the dataset's ``tfrecords`` folder.
            img_format: ``"jpg"`` or ``"png"``.
            quality: JPEG quality.
            skip_existing: Leave slides whose TFRecord already exists.
            progress: Show a progress bar over slides.
            **wsi_kwargs: Passed to :meth:`wsi` (e.g. ``stride_div``, ``tissue``).

        Returns:
            An :class:`ExtractionSummary`.
        """
        self._tile_settings()
        folder = Path(outdir) if outdir is not None else self.tfrecords_dir
        if folder is None:
            raise ConfigError(
                "No output folder: pass outdir= or create the Dataset with tfrecords=."
            )
        summary = ExtractionSummary()
        slides = self.slides()
        if progress:
            from tqdm.auto import tqdm

            slides = tqdm(slides, desc="Extracting tiles", unit="slide")
        for name in slides:
            target = folder / f"{safe_name(name)}.tfrecords"
            if skip_existing and target.is_file():
                summary.skipped[name] = target
                continue
            try:
                wsi = self.wsi(name, **wsi_kwargs)
                try:
                    path = wsi.extract_tiles(folder, img_format, quality, progress=False)
                finally:
                    wsi.close()
                summary.written[name] = path
                summary.num_tiles[name] = len(TFRecordReader(path))
            except Exception as exc:  # one bad slide never stops the run (reported at the end)
                summary.failed[name] = f"{type(exc).__name__}: {exc}"
                logger.warning("Skipping slide %s: %s", name, exc)
        if summary.failed:
            logger.warning("%s", summary)
        return summary
