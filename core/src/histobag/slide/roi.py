"""Regions of interest: polygons in level-0 pixel coordinates, loaded from GeoJSON or CSV.

Two file formats are read:

* GeoJSON as QuPath exports it: a ``FeatureCollection``, a list of features, or a single
  feature, with ``Polygon`` or ``MultiPolygon`` geometries. A polygon's first ring is its outline,
  further rings are holes. Other geometry types (points, lines) are ignored.
* CSV with a header ``roi_name,x_base,y_base``: one vertex per row, consecutive rows with the same
  ``roi_name`` form one polygon (slideflow's layout).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import points_in_poly

from histobag.slide.errors import ROIError

__all__ = ["ROI", "ROI_SUFFIXES", "as_rois", "find_roi_file", "load_rois", "points_in_rois"]

#: File suffixes recognised as ROI files, in order of preference.
ROI_SUFFIXES = (".geojson", ".json", ".csv")


@dataclass(frozen=True)
class ROI:
    """One polygon region of interest in level-0 pixel coordinates.

    Attributes:
        name: Its name (QuPath's classification or name, or the CSV ``roi_name``).
        exterior: (N, 2) float array of (x, y) vertices of the outline.
        holes: Holes cut out of the region, each an (M, 2) array.
    """

    name: str
    exterior: np.ndarray
    holes: tuple[np.ndarray, ...] = field(default_factory=tuple)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Bool mask of the (x, y) ``points`` inside the outline and outside every hole."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        inside = points_in_poly(points, self.exterior)
        for hole in self.holes:
            inside &= ~points_in_poly(points, hole)
        return inside


def _ring(coords: Any, source: str) -> np.ndarray:
    arr = np.asarray(coords, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 2 or len(arr) < 3:
        raise ROIError(
            f"{source}: a polygon ring needs at least 3 (x, y) vertices, got shape {arr.shape}. "
            "Check that the file holds level-0 pixel coordinates as QuPath exports them."
        )
    return arr[:, :2]


def _feature_name(feature: dict[str, Any], default: str) -> str:
    props = feature.get("properties") or {}
    classification = props.get("classification")
    if isinstance(classification, dict) and classification.get("name"):
        return str(classification["name"])
    return str(props.get("name") or feature.get("id") or default)


def _rois_from_geojson(data: Any, source: str) -> list[ROI]:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, dict) and "coordinates" in data:
        features = [{"type": "Feature", "geometry": data}]
    elif isinstance(data, list):
        features = data
    else:
        raise ROIError(
            f"{source}: not GeoJSON with polygons (expected a FeatureCollection or a list of "
            "features). Export annotations from QuPath with 'Export objects as GeoJSON'."
        )
    rois = []
    for i, feature in enumerate(features):
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if not isinstance(geometry, dict):
            continue
        name = _feature_name(feature, f"roi_{i}")
        kind = geometry.get("type")
        if kind == "Polygon":
            polygons = [geometry.get("coordinates", [])]
        elif kind == "MultiPolygon":
            polygons = geometry.get("coordinates", [])
        else:
            continue
        for rings in polygons:
            if not rings:
                continue
            exterior = _ring(rings[0], source)
            holes = tuple(_ring(r, source) for r in rings[1:])
            rois.append(ROI(name, exterior, holes))
    return rois


def _rois_from_csv(path: Path) -> list[ROI]:
    vertices: dict[str, list[tuple[float, float]]] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        required = {"roi_name", "x_base", "y_base"}
        header = {h.strip() for h in reader.fieldnames or []}
        if not required <= header:
            raise ROIError(
                f"{path}: ROI CSV needs the columns roi_name, x_base, y_base; found "
                f"{sorted(header)}."
            )
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            try:
                xy = (float(row["x_base"]), float(row["y_base"]))
            except (TypeError, ValueError):
                raise ROIError(
                    f"{path}, line {line}: x_base and y_base must be numbers, got "
                    f"{row.get('x_base')!r}, {row.get('y_base')!r}."
                ) from None
            vertices.setdefault(row["roi_name"], []).append(xy)
    return [ROI(name, _ring(v, f"{path} (roi {name!r})")) for name, v in vertices.items()]


def load_rois(path: str | Path) -> list[ROI]:
    """Read the polygons of a GeoJSON (``.geojson``/``.json``) or CSV ROI file.

    Args:
        path: The ROI file.

    Returns:
        The polygons in file order. An empty list if the file has no polygon.

    Raises:
        ROIError: The file is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise ROIError(f"ROI file {path} does not exist. Check the path passed as roi=.")
    if path.suffix.lower() == ".csv":
        return _rois_from_csv(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ROIError(f"{path}: not valid JSON ({exc}). Re-export the annotations.") from None
    return _rois_from_geojson(data, str(path))


def as_rois(roi: str | Path | ROI | Iterable[Any] | None) -> list[ROI]:
    """Normalise a ``roi=`` argument: a file path, an :class:`ROI`, or a list of ROIs/arrays."""
    if roi is None:
        return []
    if isinstance(roi, str | Path):
        return load_rois(roi)
    if isinstance(roi, ROI):
        return [roi]
    rois = []
    for i, item in enumerate(roi):
        rois.append(item if isinstance(item, ROI) else ROI(f"roi_{i}", _ring(item, "roi=")))
    return rois


def points_in_rois(points: np.ndarray, rois: Sequence[ROI]) -> np.ndarray:
    """Bool mask of the (x, y) ``points`` that lie inside at least one ROI."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    inside = np.zeros(len(points), dtype=bool)
    for roi in rois:
        inside |= roi.contains(points)
    return inside


def find_roi_file(folder: str | Path, slide_name: str) -> Path | None:
    """Return the ROI file ``<slide_name>.geojson`` / ``.json`` / ``.csv`` in ``folder``."""
    folder = Path(folder)
    for suffix in ROI_SUFFIXES:
        candidate = folder / f"{slide_name}{suffix}"
        if candidate.is_file():
            return candidate
    return None
