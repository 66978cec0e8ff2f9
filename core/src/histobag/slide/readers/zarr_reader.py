"""The ``ome-zarr`` reader: OME-Zarr images (``.zarr`` / ``.ome.zarr`` folders), with zarr.

An OME-Zarr image is a zarr group whose ``multiscales`` metadata lists its pyramid: one array
per level (``datasets``), each with a ``scale`` coordinate transformation in the units of its
axes. Levels, downsamples (the ratio of each level's x/y scale to level 0's) and the level-0
mpp (the x scale in micrometres, when the x axis has a length unit) all come from there.
NGFF 0.4 (zarr v2, ``.zattrs``) and 0.5 (zarr v3, ``zarr.json`` under ``"ome"``) are read, and
so is the bioformats2raw layout (the image in the group's ``0`` subgroup). Bright-field
images only: 8-bit, with 1, 3 or 4 channels on the ``c`` axis (or none); a ``t`` or ``z`` axis
is read at its first index.

Regions read only the chunks they cover. zarr is an optional extra: ``pip install
"histobag[zarr]"``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from histobag.errors import SlideOpenError
from histobag.optional import require
from histobag.slide.readers.array_reader import (
    ArrayReader,
    level_downsamples,
    microns,
    to_rgb,
)
from histobag.slide.readers.select import is_url

__all__ = ["OmeZarrReader"]

#: Axis names of NGFF 0.1 / 0.2, which did not store them.
_DEFAULT_AXES = ("t", "c", "z", "y", "x")


def _axes(multiscale: dict[str, Any], ndim: int) -> tuple[list[str], dict[str, str]]:
    """Axis names in array order and the unit of each axis that has one."""
    axes = multiscale.get("axes")
    if axes is None:  # NGFF 0.1/0.2: always t, c, z, y, x
        return list(_DEFAULT_AXES[-ndim:]), {}
    names, units = [], {}
    for axis in axes:
        if isinstance(axis, str):  # NGFF 0.3: names only
            names.append(axis.lower())
        else:
            names.append(str(axis["name"]).lower())
            if axis.get("unit"):
                units[names[-1]] = str(axis["unit"])
    return names, units


def _scale(transforms: list[dict[str, Any]] | None, ndim: int) -> list[float]:
    """The product of the ``scale`` transformations (all ones when there are none)."""
    scale = [1.0] * ndim
    for transform in transforms or ():
        if transform.get("type") == "scale" and "scale" in transform:
            scale = [a * float(b) for a, b in zip(scale, transform["scale"], strict=True)]
    return scale


def _multiscales(group: Any) -> tuple[Any, dict[str, Any]]:
    """The group holding the image and its first multiscale, or raise."""
    for _ in range(2):
        attrs = group.attrs.asdict()
        attrs = attrs.get("ome", attrs)  # NGFF 0.5 nests its metadata under "ome"
        if attrs.get("multiscales"):
            return group, attrs["multiscales"][0]
        if "bioformats2raw.layout" not in attrs:
            break
        group = group["0"]  # bioformats2raw: the first image is the group "0"
    raise SlideOpenError("it has no OME-Zarr multiscales metadata")


class OmeZarrReader(ArrayReader):
    """An OME-Zarr image read with zarr.

    Args:
        source: Path of the ``.zarr`` / ``.ome.zarr`` folder (or a URL zarr's fsspec store
            opens).
    """

    def __init__(self, source: str) -> None:
        zarr = require("zarr", extra="zarr", purpose="The ome-zarr slide reader")
        if not is_url(source) and not Path(source).is_dir():
            raise SlideOpenError(f"OME-Zarr folder {source} does not exist. Check the path.")
        try:
            group, multiscale = _multiscales(zarr.open_group(source, mode="r"))
            arrays = [group[dataset["path"]] for dataset in multiscale["datasets"]]
        except SlideOpenError as exc:
            raise SlideOpenError(f"Cannot open {source} as OME-Zarr: {exc}.") from None
        except Exception as exc:  # zarr raises several kinds on a folder that is not its own
            raise SlideOpenError(
                f"Cannot open {source} as OME-Zarr: {type(exc).__name__}: {exc}."
            ) from None
        ndim = arrays[0].ndim
        names, units = _axes(multiscale, ndim)
        self._check(source, arrays, names)
        self._arrays = arrays
        self._x, self._y = names.index("x"), names.index("y")
        self._c = names.index("c") if "c" in names else None
        shared = _scale(multiscale.get("coordinateTransformations"), ndim)
        scales = [
            [a * b for a, b in zip(shared, _scale(d.get("coordinateTransformations"), ndim))]
            for d in multiscale["datasets"]
        ]
        self.source = source
        self.level_dimensions = tuple(
            (int(a.shape[self._x]), int(a.shape[self._y])) for a in arrays
        )
        self.dimensions = self.level_dimensions[0]
        self.level_downsamples = self._downsamples(scales)
        self.mpp = microns(scales[0][self._x], units.get("x"))
        self.magnification = None
        self.vendor = "ome-zarr"
        self.version = str(zarr.__version__)
        self.properties = {
            "openslide.vendor": "ome-zarr",
            "openslide.level-count": str(len(arrays)),
            "ome-zarr.version": str(multiscale.get("version", "")),
            "ome-zarr.name": str(multiscale.get("name", "")),
            "ome-zarr.axes": "".join(names),
        }
        if self.mpp is not None:
            self.properties["openslide.mpp-x"] = repr(self.mpp)
            mpp_y = microns(scales[0][self._y], units.get("y"))
            self.properties["openslide.mpp-y"] = repr(mpp_y if mpp_y else self.mpp)

    @staticmethod
    def _check(source: str, arrays: list[Any], names: list[str]) -> None:
        if "x" not in names or "y" not in names or len(names) != arrays[0].ndim:
            raise SlideOpenError(
                f"Cannot read {source} as a slide: its axes {names} do not match its "
                f"{arrays[0].ndim}-dimensional arrays with an x and a y axis."
            )
        channels = arrays[0].shape[names.index("c")] if "c" in names else 1
        if np.dtype(arrays[0].dtype) != np.uint8 or channels not in (1, 3, 4):
            raise SlideOpenError(
                f"Cannot read {source} as a slide: it holds {channels} channels of "
                f"{arrays[0].dtype}; bright-field slides are 8-bit RGB or gray."
            )

    def _downsamples(self, scales: list[list[float]]) -> tuple[float, ...]:
        """Each level's x/y scale over level 0's (the sizes' ratio when there are none)."""
        x0, y0 = scales[0][self._x], scales[0][self._y]
        values = [(s[self._x] / x0 + s[self._y] / y0) / 2 for s in scales]
        if len(values) > 1 and all(math.isclose(v, 1.0) for v in values):
            return level_downsamples(list(self.level_dimensions))  # scales left out
        return tuple(values)

    def read_window(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """The window's pixels: the chunks it covers, first ``t``/``z`` index."""
        index: list[Any] = [0] * len(self._arrays[level].shape)
        index[self._x], index[self._y] = slice(x0, x1), slice(y0, y1)
        order = [self._y, self._x]
        if self._c is not None:
            index[self._c] = slice(None)
            order.append(self._c)
        kept = sorted(order)  # integer indices drop their axes; the rest keep array order
        window = np.asarray(self._arrays[level][tuple(index)])
        return to_rgb(np.transpose(window, [kept.index(axis) for axis in order]))
