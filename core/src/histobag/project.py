"""``Project``: a folder with ``project.json`` and default output folders (slideflow-like).

Layout::

    <root>/project.json          name, slide source, annotations, ROI folder (JSON only)
    <root>/tfrecords/<px>px_<um>um/   tiles, one folder per tile size ('256px_20x' for "20x")
    <root>/bags/                 feature bags
    <root>/models/               trained models
    <root>/results/              analyses

Paths in ``project.json`` are stored relative to the root when they lie inside it, so a project
folder can be moved with its data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histobag import validation
from histobag.bags.config import CONFIG_NAME, fingerprint, read_config
from histobag.dataset import Dataset, Filters
from histobag.errors import ConfigError, HistobagError
from histobag.extractors.saved import is_saved_model
from histobag.files import write_json_atomic
from histobag.naming import safe_name
from histobag.slide.errors import TileSettingsError
from histobag.slide.magnification import TileUm, format_tile_um
from histobag.slide.tissue import tissue_record
from histobag.specs import DEFAULT_TISSUE_DETECTOR
from histobag.tile_transforms import resolve_tile_transforms

if TYPE_CHECKING:
    from histobag.bags.generate import BagRunReport

__all__ = ["PROJECT_FILE", "Project"]

#: Name of the settings file at a project's root.
PROJECT_FILE = "project.json"
_FORMAT = "histobag-project"
_VERSION = 1
_FOLDERS = ("tfrecords", "bags", "models", "results")


def _store(path: str | Path | None, root: Path) -> str | None:
    if path is None:
        return None
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        return str(resolved)


def _load(value: Any, root: Path, key: str, file: Path) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{file}: {key!r} must be a path string or null, got {value!r}.")
    path = Path(value)
    return path if path.is_absolute() else root / path


class Project:
    """A project folder: its slides and annotations, and where outputs go.

    Open an existing project with ``Project(root)``; make one with :meth:`create`.

    Args:
        root: The project folder (holding ``project.json``).

    Raises:
        ConfigError: ``project.json`` is missing or invalid.

    Example:
        >>> P = Project.create("my_project", slides="slides/", annotations="labels.csv")
        ... # doctest: +SKIP
        >>> ds = P.dataset(256, "20x", filters={"site": ["A"]})  # doctest: +SKIP
        >>> ds.extract_tiles()  # writes my_project/tfrecords/256px_20x/  # doctest: +SKIP
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        file = self.root / PROJECT_FILE
        if not file.is_file():
            raise ConfigError(
                f"{self.root} is not a histobag project (no {PROJECT_FILE}). Create one with "
                "Project.create(root, slides=..., annotations=...)."
            )
        try:
            settings = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{file} is not valid JSON ({exc}). Fix it, or recreate the project with "
                "Project.create."
            ) from None
        if not isinstance(settings, dict) or settings.get("format") != _FORMAT:
            raise ConfigError(
                f'{file} is not a histobag project file (expected "format": "{_FORMAT}"). '
                "Create one with Project.create."
            )
        if settings.get("version") != _VERSION:
            raise ConfigError(
                f"{file} has version {settings.get('version')!r}; this histobag reads version "
                f"{_VERSION}. Upgrade histobag or recreate the project."
            )
        self.settings = settings
        self.name: str = str(settings.get("name") or self.root.name)
        slides = settings.get("slides")
        if isinstance(slides, list):
            self.slides: Path | list[Path] | None = [
                p for p in (_load(s, self.root, "slides", file) for s in slides) if p is not None
            ]
        else:
            self.slides = _load(slides, self.root, "slides", file)
        self.annotations = _load(settings.get("annotations"), self.root, "annotations", file)
        self.roi = _load(settings.get("roi"), self.root, "roi", file)

    @classmethod
    def create(
        cls,
        root: str | Path,
        slides: str | Path | Iterable[str | Path] | None = None,
        annotations: str | Path | None = None,
        name: str | None = None,
        *,
        roi: str | Path | None = None,
    ) -> Project:
        """Create a project folder with ``project.json`` and its output folders.

        Args:
            root: Folder to create (or an existing folder without a project).
            slides: Folder of slides, or a list of slide paths.
            annotations: CSV with a ``slide`` column and outcome columns.
            name: Project name; defaults to the folder's name.
            roi: Folder of ROI files (``<slide>.geojson`` / ``.csv``).

        Raises:
            ConfigError: ``root`` already holds a project.
        """
        root = Path(root).resolve()
        file = root / PROJECT_FILE
        if file.exists():
            raise ConfigError(
                f"{root} already holds a project; open it with Project({str(root)!r})."
            )
        if isinstance(slides, str | Path) or slides is None:
            stored_slides: Any = _store(slides, root)
        else:
            stored_slides = [_store(p, root) for p in slides]
        settings = {
            "format": _FORMAT,
            "version": _VERSION,
            "name": name or root.name,
            "slides": stored_slides,
            "annotations": _store(annotations, root),
            "roi": _store(roi, root),
        }
        for folder in _FOLDERS:
            (root / folder).mkdir(parents=True, exist_ok=True)
        write_json_atomic(file, settings)
        return cls(root)

    # ---------------------------------------------------------------- folders

    def tfrecords_dir(self, tile_px: int, tile_um: TileUm) -> Path:
        """``<root>/tfrecords/<tile_px>px_<tile_um>um`` (``256px_20x`` for ``"20x"``)."""
        return self.root / "tfrecords" / f"{int(tile_px)}px_{format_tile_um(tile_um)}"

    @property
    def bags_dir(self) -> Path:
        """``<root>/bags``: feature bags."""
        return self.root / "bags"

    @property
    def models_dir(self) -> Path:
        """``<root>/models``: trained models."""
        return self.root / "models"

    @property
    def results_dir(self) -> Path:
        """``<root>/results``: analyses and figures."""
        return self.root / "results"

    # ---------------------------------------------------------------- datasets

    def dataset(
        self,
        tile_px: int,
        tile_um: TileUm,
        *,
        filters: Filters | None = None,
        filter_blank: str | Sequence[str] | None = None,
        tissue: str | dict[str, Any] | None = DEFAULT_TISSUE_DETECTOR,
        mpp: float | None = None,
        reader: str = "auto",
    ) -> Dataset:
        """Return the project's slides as a :class:`~histobag.dataset.Dataset` at one tile size.

        Its TFRecord folder is :meth:`tfrecords_dir` for this tile size; ``tissue`` is a
        tissue detector (``"hsv"``, the default, ``"otsu"``, ...) or ``None`` (no tissue
        detection),
        ``mpp`` overrides the slides' own resolution and ``reader`` picks the slide reader,
        as in :class:`~histobag.dataset.Dataset`.

        Raises:
            TileSettingsError: ``tile_px`` or ``tile_um`` is out of range (see
                :mod:`histobag.validation`).
        """
        tile_px, tile_um = validation.check_tile_size(tile_px, tile_um, error=TileSettingsError)
        return Dataset(
            self.slides,
            self.annotations,
            tile_px,
            tile_um,
            filters=filters,
            filter_blank=filter_blank,
            tfrecords=self.tfrecords_dir(tile_px, tile_um),
            roi=self.roi,
            tissue=tissue,
            mpp=mpp,
            reader=reader,
        )

    def generate_feature_bags(
        self,
        extractor: Any,
        dataset: Dataset | None = None,
        outdir: str | Path = "auto",
        **kwargs: Any,
    ) -> BagRunReport:
        """Write one feature bag per slide of ``dataset`` (slideflow's signature).

        Args:
            extractor: A registered extractor name or a built extractor.
            dataset: Slides at one tile size, e.g. ``P.dataset(224, 112)``.
            outdir: Bags folder; ``"auto"`` is ``<root>/bags/<extractor>_<px>px_<um>``
                (plus the normalizer's and tile transforms' names, and ``no-tissue-detection``
                for a dataset with ``tissue=None``).
            **kwargs: ``normalizer``, ``tile_transforms``, ``writer``, ``batch_size``,
                ``num_workers``,
                ``min_tiles``, ``max_tiles``, ``overwrite``, ``source``, ``progress``,
                ``verify`` (see :func:`histobag.bags.generate_feature_bags`).

        Raises:
            ConfigError: No dataset, or one without a tile size.
            ArgumentError: An argument is out of range (checked before any work starts).
        """
        if not hasattr(dataset, "generate_feature_bags"):
            raise ConfigError(
                "generate_feature_bags needs a dataset at one tile size, e.g. "
                "P.generate_feature_bags(extractor, P.dataset(tile_px=224, tile_um=112)), got "
                f"{type(dataset).__name__}."
            )
        if outdir == "auto":
            if isinstance(extractor, str):
                tag = Path(extractor).name if is_saved_model(extractor) else extractor
            else:
                tag = extractor.tag
            norm = kwargs.get("normalizer")
            norm_tag = norm if isinstance(norm, str) else getattr(norm, "method", None)
            transforms = resolve_tile_transforms(kwargs.get("tile_transforms"))
            kwargs["tile_transforms"] = transforms  # built once, checked before any work
            parts = [tag, f"{dataset.tile_px}px", format_tile_um(dataset.tile_um)]
            parts += [norm_tag] if norm_tag else []
            parts += [t.name for t in transforms]
            tissue = getattr(dataset, "tissue", DEFAULT_TISSUE_DETECTOR)
            tissue_name = tissue.get("name") if isinstance(tissue, dict) else tissue
            outdir = self.bags_dir / safe_name("_".join(parts))
            if tissue_name is None:
                outdir = outdir.with_name(f"{outdir.name}_no-tissue-detection")
            elif (tissue_name != DEFAULT_TISSUE_DETECTOR or isinstance(tissue, dict)) and not (
                _made_with(outdir, tissue)  # Otsu's folder from when it was the default
            ):
                # Another detector: another folder.
                outdir = outdir.with_name(f"{outdir.name}_{safe_name(f'tissue-{tissue_name}')}")
        return dataset.generate_feature_bags(extractor, outdir, **kwargs)

    def generate_features(self, model: Any, dataset: Dataset | None = None, **kwargs: Any) -> Any:
        """Tile features of a dataset in memory (a :class:`~histobag.analysis.DatasetFeatures`).

        See :func:`histobag.analysis.project_methods.generate_features`.
        """
        # Deferred: analysis is the optional histobag[analysis] extra (umap-learn, matplotlib).
        from histobag.analysis.project_methods import generate_features

        return generate_features(self, model, dataset, **kwargs)

    def generate_mosaic(self, df: Any, dataset: Dataset | None = None, **kwargs: Any) -> Any:
        """A mosaic map of tile images over a UMAP (a :class:`~histobag.analysis.Mosaic`).

        See :func:`histobag.analysis.project_methods.generate_mosaic`.
        """
        # Deferred: analysis is the optional histobag[analysis] extra (umap-learn, matplotlib).
        from histobag.analysis.project_methods import generate_mosaic

        return generate_mosaic(self, df, dataset, **kwargs)

    def __repr__(self) -> str:
        return f"Project({str(self.root)!r}, name={self.name!r})"


def _made_with(bags_dir: Path, tissue: Any) -> bool:
    """Whether ``bags_dir`` holds bags made with the tissue detection ``tissue``.

    Bags made when Otsu was the default detector live in the folder without a ``tissue-``
    suffix; asking for ``tissue="otsu"`` finds and resumes them there.
    """
    config_file = bags_dir / CONFIG_NAME
    if not config_file.is_file():
        return False
    try:
        recorded = fingerprint(read_config(config_file))["tissue"]
        return bool(recorded == fingerprint({"tissue": tissue_record(tissue)})["tissue"])
    except HistobagError:  # a damaged config: the run itself will say so
        return False
