"""Real vendor files from openslide-python's test suite, broken ones included."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from histobag.errors import HistobagError, MissingMPPError, SlideOpenError, SlideReadError
from histobag.slide import WSI


def test_small_svs_opens_with_its_mpp(vendor_dir):
    wsi = WSI(vendor_dir / "small.svs", 8, 4, tissue=None)
    assert wsi.vendor == "aperio"
    assert wsi.mpp == pytest.approx(0.499)
    assert wsi.dimensions == (16, 16)
    assert len(wsi.levels) == 1
    assert wsi.full_extract_px == 8
    assert len(wsi) == 4
    direct = openslide.OpenSlide(str(vendor_dir / "small.svs")).read_region((8, 8), 0, (8, 8))
    np.testing.assert_array_equal(wsi.read_tile(3), np.asarray(direct.convert("RGB")))
    np.testing.assert_array_equal(wsi.coords[3], [8, 8])


def test_boxes_tiff_has_no_real_mpp(vendor_dir):
    path = vendor_dir / "boxes.tiff"
    with pytest.raises(MissingMPPError, match=r"mpp=") as info:
        WSI(path, 32, 32)
    assert "boxes.tiff" in str(info.value)
    assert "implausible" in str(info.value)
    wsi = WSI(path, 32, 64, mpp=0.5, tissue=None)  # 128 px; level 2 (4.016x) would give 31.9
    assert len(wsi.levels) == 4
    assert wsi.level == 1
    assert wsi.read_px == 64
    x, y = wsi.coords[1]
    assert wsi.read_tile(1).shape == (32, 32, 3)
    assert (x, y) == (128, 0)


def test_unopenable_tiff_raises_slide_open_error(vendor_dir):
    with pytest.raises(SlideOpenError) as info:
        WSI(vendor_dir / "unopenable.tiff", 32, 16)
    message = str(info.value)
    assert "unopenable.tiff" in message
    assert "Unsupported TIFF compression" in message
    with pytest.raises(SlideOpenError, match="does not recognise its format"):
        WSI(vendor_dir / "boxes.png", 32, 16, mpp=1.0, reader="openslide")
    assert WSI(vendor_dir / "boxes.png", 32, 16, mpp=1.0).reader_name == "image"  # a plain PNG
    with pytest.raises(SlideOpenError, match="does not exist"):
        WSI(vendor_dir / "no-such-slide.svs", 32, 16)


def test_unreadable_svs_raises_slide_read_error(vendor_dir):
    path = vendor_dir / "unreadable.svs"
    with pytest.raises(SlideOpenError, match=r"opens, but its pixels cannot be read.*Bogus"):
        WSI(path, 8, 4, tissue=None)  # "auto" checks that a reader can decode it
    wsi = WSI(path, 8, 4, tissue=None, reader="openslide")  # opens; reading pixels does not
    with pytest.raises(SlideReadError) as info:
        wsi.read_tile(0)
    message = str(info.value)
    assert "unreadable.svs" in message
    assert "(0, 0)" in message
    assert "Bogus marker" in message
    with pytest.raises(SlideReadError, match=r"unreadable\.svs"):
        WSI(path, 8, 4, reader="openslide")  # the tissue thumbnail needs pixels too
    assert issubclass(SlideReadError, HistobagError)
