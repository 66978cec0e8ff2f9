"""Whole-slide images and their tile grids (OpenSlide), tissue detection and ROIs.

Importing this package loads numpy, Pillow, scikit-image and OpenSlide, never torch.
"""

from __future__ import annotations

from histobag.slide.errors import ROIError, TileSettingsError
from histobag.slide.magnification import format_tile_um, magnification_to_mpp, tile_microns
from histobag.slide.roi import ROI, load_rois
from histobag.slide.tiling import Level
from histobag.slide.tissue import otsu_tissue_mask
from histobag.slide.wsi import WSI

__all__ = [
    "ROI",
    "WSI",
    "Level",
    "ROIError",
    "TileSettingsError",
    "format_tile_um",
    "load_rois",
    "magnification_to_mpp",
    "otsu_tissue_mask",
    "tile_microns",
]
